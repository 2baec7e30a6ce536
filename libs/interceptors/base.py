"""A server interceptor written as one async context manager around the RPC."""

import abc
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

import grpc
from grpc_interceptor.server import AsyncServerInterceptor

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


class AroundInterceptor(AsyncServerInterceptor, metaclass=abc.ABCMeta):
    """Runs ``around()`` around unary and server-streaming RPCs alike."""

    @abc.abstractmethod
    def around(
        self, context: grpc.aio.ServicerContext[Any, Any], method_name: str
    ) -> AbstractAsyncContextManager[None]:
        """What to do before and after the RPC (and on its failure)."""

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        method_name: str,
    ) -> Any:
        if inspect.isasyncgenfunction(method):
            return self._stream(method, request_or_iterator, context, method_name)
        async with self.around(context, method_name):
            return await method(request_or_iterator, context)

    async def _stream(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        method_name: str,
    ) -> AsyncIterator[Any]:
        async with self.around(context, method_name):
            async for response in method(request_or_iterator, context):
                yield response
