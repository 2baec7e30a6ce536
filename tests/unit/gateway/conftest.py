"""The gwtest protos as a route table, built the way reflection would deliver them."""

import hashlib
from pathlib import Path

import google.api
import grpc
import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from gateway.reflection import Descriptors
from gateway.routes import Route, RouteTable, build_routes

ROOT = Path(__file__).resolve().parents[3]
TEST_PROTOS = ROOT / "tests" / "integration" / "gateway" / "protos"


def library_descriptors(out: Path) -> Descriptors:
    """The library service's files (with every dependency), as reflection returns them."""
    target = out / "library.pb"
    includes = [
        TEST_PROTOS,
        ROOT / "protos",
        Path(grpc_tools.__file__).parent / "_proto",
        Path(google.api.__path__[0]).parent.parent,
    ]
    args = ["protoc", *(f"-I{d}" for d in includes), "--include_imports"]
    args += [f"--descriptor_set_out={target}", "gwtest/v1/library.proto"]
    assert protoc.main(args) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes()).file
    serialized = {f.name: f.SerializeToString() for f in files}
    digest = hashlib.sha256(b"".join(serialized[n] for n in sorted(serialized))).hexdigest()
    return Descriptors(("gwtest.v1.LibraryService",), serialized, digest)


@pytest.fixture(scope="session")
def descriptors(tmp_path_factory: pytest.TempPathFactory) -> Descriptors:
    return library_descriptors(tmp_path_factory.mktemp("descriptors"))


@pytest.fixture(scope="session")
def table(descriptors: Descriptors) -> RouteTable:
    # The channel is never used: these tests stop before any call.
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    return RouteTable(build_routes("library", descriptors, channel))


def route_of(table: RouteTable, method: str, path: str) -> Route:
    match = table.match(method, path)
    assert match is not None, f"{method} {path} should match"
    return match.route
