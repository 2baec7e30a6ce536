"""Reads an upstream's services and file descriptors through gRPC server reflection."""

import asyncio
import hashlib
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

# v1 and v1alpha share their messages field for field, so one set of classes speaks both.
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
REFLECTION_V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# How long a finished session waits for the server to end its stream.
_CLOSE_SECONDS = 1.0
# Services every Folio server carries for operators; they never become REST routes.
INFRASTRUCTURE_PREFIXES = ("grpc.health.", "grpc.reflection.")
# The end-of-stream marker of grpc.aio reads (grpc-stubs does not declare it).
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class ReflectionError(Exception):
    """The upstream answered reflection with an error."""


@dataclass(frozen=True)
class Descriptors:
    """What one upstream serves: its service names and every file they need."""

    services: tuple[str, ...]
    files: dict[str, bytes]
    digest: str

    def ordered_files(self) -> list[bytes]:
        """The serialized files, each after its dependencies, as a pool must receive them."""
        protos = {
            name: descriptor_pb2.FileDescriptorProto.FromString(data)
            for name, data in self.files.items()
        }
        ordered: list[bytes] = []
        done: set[str] = set()

        def visit(name: str) -> None:
            if name in done or name not in protos:
                return
            done.add(name)
            for dependency in protos[name].dependency:
                visit(dependency)
            ordered.append(self.files[name])

        for name in sorted(protos):
            visit(name)
        return ordered


class _Session:
    """One reflection stream: requests and answers in lock step."""

    def __init__(self, channel: grpc.aio.Channel, method: str, deadline: float) -> None:
        self._call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(None, timeout=deadline)

    async def ask(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        await self._call.write(request)
        response = await self._call.read()
        if response is EOF:
            raise ReflectionError("reflection stream ended early")
        assert isinstance(response, reflection_pb2.ServerReflectionResponse)
        if response.HasField("error_response"):
            raise ReflectionError(response.error_response.error_message)
        return response

    async def close(self) -> None:
        """Half-close and let the server end the stream with OK, rather than cancel it."""
        try:
            await self._call.done_writing()
            async with asyncio.timeout(_CLOSE_SECONDS):
                while await self._call.read() is not EOF:
                    pass
        except (grpc.aio.AioRpcError, TimeoutError):
            pass
        finally:
            self._call.cancel()


async def fetch_descriptors(channel: grpc.aio.Channel, deadline: float = 5.0) -> Descriptors:
    """The upstream's descriptors via reflection v1, or v1alpha where v1 is not served."""
    try:
        return await _fetch(channel, REFLECTION_V1, deadline)
    except grpc.aio.AioRpcError as error:
        # A server without v1 answers UNIMPLEMENTED, but when that answer races our first
        # write, grpc.aio reports the failed write as INTERNAL instead.
        if error.code() not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL):
            raise
    return await _fetch(channel, REFLECTION_V1ALPHA, deadline)


async def _fetch(channel: grpc.aio.Channel, method: str, deadline: float) -> Descriptors:
    session = _Session(channel, method, deadline)
    try:
        listed = await session.ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        services = tuple(
            sorted(
                s.name
                for s in listed.list_services_response.service
                if not s.name.startswith(INFRASTRUCTURE_PREFIXES)
            )
        )
        files: dict[str, bytes] = {}
        for service in services:
            answer = await session.ask(
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
            )
            _collect(files, answer)
        # Servers may send a file without its dependencies; ask for the missing ones by name.
        missing = _missing_dependencies(files)
        while missing:
            for name in missing:
                answer = await session.ask(
                    reflection_pb2.ServerReflectionRequest(file_by_filename=name)
                )
                _collect(files, answer)
            still = _missing_dependencies(files)
            if still & missing:
                raise ReflectionError(f"upstream cannot serve {sorted(still & missing)}")
            missing = still
    finally:
        await session.close()
    digest = hashlib.sha256()
    for service in services:
        digest.update(service.encode())
    for name in sorted(files):
        digest.update(name.encode())
        digest.update(files[name])
    return Descriptors(services=services, files=files, digest=digest.hexdigest())


def _collect(files: dict[str, bytes], answer: reflection_pb2.ServerReflectionResponse) -> None:
    for data in answer.file_descriptor_response.file_descriptor_proto:
        name = descriptor_pb2.FileDescriptorProto.FromString(data).name
        files.setdefault(name, data)


def _missing_dependencies(files: dict[str, bytes]) -> set[str]:
    needed: set[str] = set()
    for data in files.values():
        needed.update(descriptor_pb2.FileDescriptorProto.FromString(data).dependency)
    return needed - files.keys()
