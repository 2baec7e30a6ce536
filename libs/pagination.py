"""List pagination per AIP-158: page_size with a default and a cap, opaque keyset tokens.

A list reads ``size + 1`` rows after the request's keyset position; :func:`page_of` keeps
``size`` of them and makes the next page's token from the last one kept. A token also
carries the list's filters (its scope), so it is refused for a list with other filters.
"""

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from libs.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    """One page to read: how many rows, after which keyset position, under which filters."""

    size: int
    after: list[str] | None
    scope: tuple[str, ...] = ()

    @property
    def limit(self) -> int:
        """Rows to read: one more than the page, to know whether another page follows."""
        return self.size + 1


def page_size(requested: int) -> int:
    """The page size to use for a request's ``page_size`` (0 means the default)."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative", field_violations={"page_size": "negative"}
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(*position: str) -> str:
    """An opaque token for the keyset position after the last item of a page."""
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


def decode_page_token(token: str, arity: int) -> list[str] | None:
    """The keyset position of a ``page_token``; None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        position = None
    if (
        not isinstance(position, list)
        or len(position) != arity
        or not all(isinstance(item, str) for item in position)
    ):
        raise InvalidArgument(
            "invalid page_token", field_violations={"page_token": "not a token from this list"}
        )
    return position


def page_request(
    requested_size: int, page_token: str, *, arity: int = 1, scope: Sequence[str] = ()
) -> PageRequest:
    """Validate a list request's ``page_size`` and ``page_token`` for a keyset of ``arity``."""
    size = page_size(requested_size)
    decoded = decode_page_token(page_token, arity + len(scope))
    if decoded is None:
        return PageRequest(size, None, tuple(scope))
    if decoded[arity:] != list(scope):
        raise InvalidArgument(
            "invalid page_token",
            field_violations={"page_token": "made for a list with other filters"},
        )
    return PageRequest(size, decoded[:arity], tuple(scope))


def page_of(
    rows: Sequence[T], request: PageRequest, position: Callable[[T], Sequence[str]]
) -> tuple[list[T], str]:
    """The page's rows and the next page's token ("" on the last page)."""
    if len(rows) <= request.size:
        return list(rows), ""
    kept = list(rows[: request.size])
    return kept, encode_page_token(*position(kept[-1]), *request.scope)
