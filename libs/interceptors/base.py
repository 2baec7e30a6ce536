"""Context variables set for the length of a call."""

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def bound(var: contextvars.ContextVar[T], value: T) -> Iterator[None]:
    """Set ``var`` for the block, then put back what it held."""
    token = var.set(value)
    try:
        yield
    finally:
        try:
            var.reset(token)
        except ValueError:
            # A server stream the client abandoned is closed later by the event loop's
            # generator finalizer, in another context: the value set here is not visible
            # there, so there is nothing to put back.
            pass
