"""The server interceptor every Folio service runs: one scope around each call.

Outermost first, it takes or makes the request id (echoed in the initial metadata) and
writes one access-log line; turns domain errors into rich statuses (and anything
unexpected into a logged INTERNAL); authenticates the caller against the method's
access level and binds the principal; runs the request checks (field behaviour,
declared rules); and opens the call's database session. It is one interceptor, and it
wraps each method's handler once, not per call: these steps sit on every RPC.
"""

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf import message

from libs import access
from libs.access import principal_var
from libs.db import Database, db_session_var
from libs.errors import FolioError
from libs.interceptors.access import AccessPolicy
from libs.interceptors.base import bound
from libs.interceptors.errors import internal_status, to_status
from libs.interceptors.request_context import REQUEST_ID_KEY, log_rpc, request_id
from libs.logs import request_id_var

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
# A check of a request message; raises InvalidArgument with field violations.
RequestCheck = Callable[[message.Message], None]
if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


class ServerChain(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Request context, errors, access, request checks and the session, for every call."""

    def __init__(
        self,
        service: str,
        access_policy: AccessPolicy,
        checks: Sequence[RequestCheck] = (),
        database: Database | None = None,
    ) -> None:
        self.domain = f"{service}.folio"
        self.access = access_policy
        self.checks = tuple(checks)
        self.database = database
        # method -> (the servicer's handler, the handler wrapped in the chain)
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = (handler, self._wrap(handler, method))
            self._wrapped[method] = known
        return known[1]

    def _wrap(self, handler: Handler, method: str) -> Handler:
        level = access.method_access(method)
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._awaiting(handler.unary_unary, method, level, checks_request=True), **codec
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._either(handler.unary_stream, method, level, checks_request=True), **codec
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._awaiting(handler.stream_unary, method, level, checks_request=False), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            self._either(handler.stream_stream, method, level, checks_request=False), **codec
        )

    def _either(self, inner: Any, method: str, level: int, *, checks_request: bool) -> Any:
        """A streaming handler yields its responses, or writes them with ``context.write``."""
        if inspect.isasyncgenfunction(inner):
            return self._streaming(inner, method, level, checks_request=checks_request)
        return self._awaiting(inner, method, level, checks_request=checks_request)

    def _awaiting(self, inner: Any, method: str, level: int, *, checks_request: bool) -> Any:
        scope = self._scope

        async def awaiting(request: Any, context: Context) -> Any:
            async with scope(context, method, level, request if checks_request else None):
                return await inner(request, context)

        return awaiting

    def _streaming(
        self, inner: Any, method: str, level: int, *, checks_request: bool
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        scope = self._scope

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            async with scope(context, method, level, request if checks_request else None):
                async for response in inner(request, context):
                    yield response

        return streaming

    @asynccontextmanager
    async def _scope(
        self, context: Context, method: str, level: int, request: message.Message | None
    ) -> AsyncIterator[None]:
        given = request_id(context)
        # Read the peer now: grpc.aio crashes when peer() is called after a call was cancelled.
        peer = context.peer()
        started = time.perf_counter()
        code: object = grpc.StatusCode.OK
        with bound(request_id_var, given):
            try:
                await context.send_initial_metadata(((REQUEST_ID_KEY, given),))
                try:
                    principal = await self.access.authenticate(level, context)
                    with bound(principal_var, principal):
                        if request is not None:
                            for check in self.checks:
                                check(request)
                        if self.database is None:
                            yield
                        else:
                            async with self.database.session() as session:
                                with bound(db_session_var, session):
                                    yield
                except FolioError as error:
                    await context.abort_with_status(to_status(error, self.domain))  # type: ignore[attr-defined]
                except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception:
                    log.exception("unhandled error in %s", method)
                    await context.abort_with_status(internal_status(self.domain))  # type: ignore[attr-defined]
            except (GeneratorExit, asyncio.CancelledError):
                # The client went away (a stream it stopped reading, a call it cancelled).
                code = context.code() or grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                log_rpc(method, code, started, peer)
