"""A test upstream: serves gwtest.v1.LibraryService (compiled at test time) with grpc.aio.

Run as ``python -m tests.integration.gateway.upstream --gen DIR --port N``. Every method of
the compiled service is served: the ones below behave as the tests expect, any other one
(an RPC a test added) copies same-named fields from its request into its response.
"""

import argparse
import asyncio
import importlib
import itertools
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, empty_pb2, json_format, message, message_factory
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer
from grpc_status import rpc_status

SERVICE = "gwtest.v1.LibraryService"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"

STATS = {"cancelled_streams": 0, "finished_streams": 0, "calls": 0}
BOOKS: dict[str, dict[str, Any]] = {}
_ETAGS = itertools.count(1)


def _classes(method: Any) -> tuple[type[message.Message], type[message.Message]]:
    return (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )


def _new_etag() -> str:
    """A fresh etag for every write of a book."""
    return f"e{next(_ETAGS)}"


def _to_json(msg: message.Message) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return result


def _abort_status(code: int, text: str, reason: str, extra: list[message.Message]) -> grpc.Status:
    details = []
    if reason:
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="library.folio"))
        details.append(packed)
    for item in extra:
        packed = any_pb2.Any()
        packed.Pack(item)
        details.append(packed)
    return rpc_status.to_status(status_pb2.Status(code=code, message=text, details=details))


class Library:
    """Behaviour of the known methods; ``pb`` is the compiled gwtest module."""

    def __init__(self, pb: Any) -> None:
        self.pb = pb

    async def GetBook(self, request: Any, context: Any) -> Any:
        if request.name not in BOOKS:
            await context.abort_with_status(
                _abort_status(5, f"no book {request.name}", "BOOK_NOT_FOUND", [])
            )
        return json_format.ParseDict(BOOKS[request.name], self.pb.Book())

    async def ListBooks(self, request: Any, context: Any) -> Any:
        books = [
            json_format.ParseDict(b, self.pb.Book())
            for name, b in sorted(BOOKS.items())
            if name.startswith(request.parent + "/")
        ]
        seen = json.dumps(_to_json(request), sort_keys=True)
        return self.pb.ListBooksResponse(books=books, seen=seen)

    async def CreateBook(self, request: Any, context: Any) -> Any:
        book = self.pb.Book()
        book.CopyFrom(request.book)
        book.name = f"{request.parent}/books/{request.book_id or len(BOOKS) + 1}"
        book.etag = _new_etag()
        BOOKS[book.name] = _to_json(book)
        return book

    async def UpdateBook(self, request: Any, context: Any) -> Any:
        current = self.pb.Book()
        if not request.update_mask.IsValidForDescriptor(self.pb.Book.DESCRIPTOR):
            await context.abort_with_status(_abort_status(3, "bad mask", "BAD_MASK", []))
        if request.book.name in BOOKS:
            json_format.ParseDict(BOOKS[request.book.name], current)
        if request.book.etag and request.book.etag != current.etag:
            # As a Folio service answers a stale etag: a conflict, never an overwrite.
            await context.abort_with_status(
                _abort_status(10, "the book changed since this etag", "ETAG_MISMATCH", [])
            )
        request.update_mask.MergeMessage(request.book, current)
        current.etag = _new_etag()
        BOOKS[current.name] = _to_json(current)
        return self.pb.UpdateBookResponse(book=current, update_mask=request.update_mask)

    async def DeleteBook(self, request: Any, context: Any) -> Any:
        BOOKS.pop(request.name, None)
        return empty_pb2.Empty()

    async def ArchiveBook(self, request: Any, context: Any) -> Any:
        return self.pb.ArchiveBookResponse(name=request.name, reason=request.reason, task_id="t1")

    async def Echo(self, request: Any, context: Any) -> Any:
        return request

    async def WhoAmI(self, request: Any, context: Any) -> Any:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        # Internal metadata the gateway must never copy into HTTP response headers.
        await context.send_initial_metadata((("x-internal-secret", "leak"),))
        context.set_trailing_metadata((("x-trailer-secret", "leak"),))
        return self.pb.WhoAmIResponse(
            authorization=metadata.get("authorization", ""),
            request_id=metadata.get("x-request-id", ""),
            deadline_seconds=context.time_remaining() or 0.0,
            metadata_keys=sorted(metadata),
            forwarded_for=metadata.get("x-forwarded-for", ""),
        )

    async def Fail(self, request: Any, context: Any) -> Any:
        if not 1 <= request.code <= 16:
            await context.abort_with_status(_abort_status(3, "no such code", "BAD_CODE", []))
        if request.bare:
            await context.abort(grpc.StatusCode.INTERNAL, "secret internals at 10.0.0.1")
        extra: list[message.Message] = []
        if request.violation_field:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=request.violation_field, description="is wrong"
            )
            extra.append(error_details_pb2.BadRequest(field_violations=[violation]))
        if request.custom_detail:
            extra.append(self.pb.CustomDetail(hint="only the upstream knows this type"))
        await context.abort_with_status(
            _abort_status(request.code, request.message, request.reason or "FAILED", extra)
        )

    async def Sleep(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(request.seconds)
        return self.pb.SleepResponse(slept=request.seconds)

    async def StreamBooks(self, request: Any, context: Any) -> AsyncIterator[Any]:
        if not (0 <= request.count <= 100 and 0 <= request.interval_seconds <= 1):
            await context.abort_with_status(
                _abort_status(3, "count must be 0-100, interval 0-1 s", "BAD_STREAM", [])
            )
        if not 0 <= request.fail_code <= 16:
            await context.abort_with_status(_abort_status(3, "no such code", "BAD_CODE", []))
        try:
            for index in range(request.count):
                yield self.pb.Book(name=f"{request.parent}/books/{index}", page_count=index)
                if request.interval_seconds:
                    await asyncio.sleep(request.interval_seconds)
            if request.fail_code:
                await context.abort_with_status(
                    _abort_status(request.fail_code, "stream failed", "STREAM_FAILED", [])
                )
            STATS["finished_streams"] += 1
        except asyncio.CancelledError:
            STATS["cancelled_streams"] += 1
            raise

    async def GetStats(self, request: Any, context: Any) -> Any:
        return self.pb.GetStatsResponse(**STATS)


def _default(
    response_class: type[message.Message],
) -> Callable[[Any, Any], Any]:
    async def handler(request: Any, _context: Any) -> Any:
        response = response_class()
        for field in request.DESCRIPTOR.fields:
            if field.name in response.DESCRIPTOR.fields_by_name and not field.is_repeated:
                if field.message_type is None:
                    setattr(response, field.name, getattr(request, field.name))
        return response

    return handler


def _counted(handler: Any, streaming: bool) -> Any:
    if streaming:

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            STATS["calls"] += 1
            async for item in handler(request, context):
                yield item

        return stream

    async def unary(request: Any, context: Any) -> Any:
        STATS["calls"] += 1
        return await handler(request, context)

    return unary


async def serve(gen: str, port: int, reflection_versions: str) -> None:
    sys.path.insert(0, gen)
    pb = importlib.import_module("gwtest.v1.library_pb2")
    service = pb.DESCRIPTOR.services_by_name["LibraryService"]
    library = Library(pb)
    handlers = {}
    for method in service.methods:
        request_class, response_class = _classes(method)
        implementation = getattr(library, method.name, None) or _default(response_class)
        implementation = _counted(implementation, method.server_streaming)
        factory = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = factory(
            implementation,
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [SERVICE, health.SERVICE_NAME]
    if reflection_versions in ("v1alpha", "both"):
        names.append(reflection.SERVICE_NAME)
    if reflection_versions in ("v1", "both"):
        names.append(REFLECTION_V1)
    servicer = ReflectionServicer(names)
    if reflection_versions in ("v1alpha", "both"):
        reflection.enable_server_reflection(names, server)
    if reflection_versions in ("v1", "both"):
        # v1 and v1alpha share their wire format, so one servicer answers both names.
        v1 = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
        )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gen", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reflection", default="both", choices=["v1", "v1alpha", "both"])
    ns = parser.parse_args()
    asyncio.run(serve(ns.gen, ns.port, ns.reflection))


if __name__ == "__main__":
    main()
