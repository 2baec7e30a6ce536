"""A server interceptor written as one async context manager around the RPC."""

import abc
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from grpc_interceptor.server import AsyncServerInterceptor


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
