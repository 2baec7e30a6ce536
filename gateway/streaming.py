"""The streaming response: a gRPC server stream relayed as SSE or NDJSON as it arrives."""

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import message

from gateway.asgi import Receive, Scope, Send
from gateway.errors import HttpError
from gateway.reflection import EOF
from gateway.routes import Route
from gateway.transcode import encode, response_json

log = logging.getLogger(__name__)

SSE_TYPE = b"text/event-stream; charset=utf-8"
NDJSON_TYPE = b"application/x-ndjson"
KEEP_ALIVE = b": keep-alive\n\n"


class StreamResponse:
    """One server-streaming RPC, relayed message by message; flushed as each one comes.

    With ``sse``, each message is a ``data:`` event (named after the field set, for a
    message that is only a oneof: ``event: delta``) and a failure a final ``event: error``;
    otherwise each is a JSON line and a failure a last ``{"error": ...}`` line. A failure
    before the first message is raised instead, so the client still gets its HTTP status.
    A client that disconnects cancels the RPC, and so does HEAD once the status is known.
    """

    def __init__(
        self,
        route: Route,
        request: message.Message,
        *,
        timeout: float,
        metadata: Sequence[tuple[str, str]],
        sse: bool,
        heartbeat: float,
        upstream_error: Callable[[grpc.aio.AioRpcError], HttpError],
    ) -> None:
        self.route = route
        self.request = request
        self.timeout = timeout
        self.metadata = metadata
        self.sse = sse
        # SSE comments keep idle proxies from closing the stream; NDJSON has no comments.
        self.heartbeat = heartbeat if sse else 0.0
        self.upstream_error = upstream_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route
        call = route.call(self.request, timeout=self.timeout, metadata=self.metadata)
        gone = asyncio.ensure_future(_wait_for_disconnect(receive))
        gone.add_done_callback(lambda _: call.cancel())
        try:
            try:
                item = await call.read()
            except grpc.aio.AioRpcError as error:
                # Nothing sent yet, so the failure still gets its proper HTTP status.
                raise self.upstream_error(error) from None
            headers = [
                (b"content-type", SSE_TYPE if self.sse else NDJSON_TYPE),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ]
            await send({"type": "http.response.start", "status": route.success, "headers": headers})
            if scope["method"] == "HEAD":
                # The first message settled the status; the rest is body, which HEAD is not.
                await _chunk(send, b"", more=False)
                return
            while item is not EOF:
                await _chunk(send, self._frame(route, item), more=True)
                item = await self._next_message(call, send)
            await _chunk(send, b"", more=False)
        except grpc.aio.AioRpcError as error:
            failure = self.upstream_error(error).body()
            frame = b"event: error\ndata: " + failure + b"\n\n" if self.sse else failure + b"\n"
            await _chunk(send, frame, more=False)
        except (asyncio.CancelledError, OSError):
            if not gone.done():
                raise
            log.info("client disconnected; cancelled %s", route.full_method)
        finally:
            gone.cancel()
            call.cancel()

    def _frame(self, route: Route, item: message.Message) -> bytes:
        value = response_json(route, item)
        if not self.sse:
            return encode(value) + b"\n"
        event = _event_name(item)
        if event is None or not isinstance(value, dict) or event not in value:
            return b"data: " + encode(value) + b"\n\n"
        # A message that is only a oneof names its event by the field set: `event: delta`.
        return b"event: " + event.encode() + b"\ndata: " + encode(value[event]) + b"\n\n"

    async def _next_message(self, call: Any, send: Send) -> Any:
        """The stream's next message, sending heartbeats while none comes."""
        if self.heartbeat <= 0:
            return await call.read()
        read = asyncio.ensure_future(call.read())
        try:
            while True:
                done, _ = await asyncio.wait((read,), timeout=self.heartbeat)
                if done:
                    return read.result()
                await _chunk(send, KEEP_ALIVE, more=True)
        finally:
            read.cancel()


def _event_name(item: message.Message) -> str | None:
    """The set field of a message made of one oneof and nothing else, if it is one."""
    descriptor = item.DESCRIPTOR
    oneofs = descriptor.oneofs
    if len(oneofs) != 1 or len(oneofs[0].fields) != len(descriptor.fields):
        return None
    which: str | None = item.WhichOneof(oneofs[0].name)
    return which


async def _chunk(send: Send, body: bytes, *, more: bool) -> None:
    """Part of the body; the server writes it to the socket at once."""
    await send({"type": "http.response.body", "body": body, "more_body": more})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
