"""Upstreams that stop, restart, change their API or start late; the gateway keeps running."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.processes import free_port
from tests.integration.gateway.conftest import (
    LIBRARY_PROTO,
    Gateway,
    Keys,
    Upstream,
    compile_protos,
    gateway_env,
)

StackFactory = Callable[..., tuple[Upstream, Gateway]]

NEW_RPC = """
  rpc Ping(PingRequest) returns (PingResponse) {
    option (google.api.http) = {
      get: "/v1/ping/{target}"
    };
    option (folio.api.v1.access) = ACCESS_PUBLIC;
  }
"""
NEW_MESSAGES = """
message PingRequest {
  string target = 1;
  string note = 2;
}

message PingResponse {
  string target = 1;
  string note = 2;
}
"""


@pytest.fixture
def stack(library_gen: Path, keys: Keys, tmp_path: Path) -> Iterator[StackFactory]:
    """Builds a private upstream + gateway pair; everything started is stopped afterwards."""
    started: list[Upstream | Gateway] = []

    def build(reflection: str = "both", start_upstream: bool = True) -> tuple[Upstream, Gateway]:
        upstream = Upstream(library_gen, free_port(), tmp_path / "up.log", reflection)
        if start_upstream:
            upstream.start()
        started.append(upstream)
        env = gateway_env(keys, {"library": upstream.address}, tmp_path)
        env["FOLIO_GATEWAY_PORT"] = str(free_port())
        env["FOLIO_GATEWAY_STARTUP_WAIT_SECONDS"] = "0.5"
        # Longer than any wait below: changes must be noticed through reconnects alone.
        env["FOLIO_GATEWAY_REFLECTION_POLL_SECONDS"] = "120"
        gateway = Gateway(int(env["FOLIO_GATEWAY_PORT"]), env, tmp_path / "gateway.log")
        gateway.start()
        started.append(gateway)
        return upstream, gateway

    yield build
    for item in reversed(started):
        item.stop()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_upstream_down_gives_503_then_recovers_without_a_gateway_restart(
    stack: StackFactory,
) -> None:
    upstream, gateway = stack()
    url = f"{gateway.url}/v1/echo"
    assert httpx.get(url, params={"text": "hi"}).json()["text"] == "hi"
    gateway_pid = gateway.process.pid if gateway.process else None

    upstream.stop()
    down = httpx.get(url, params={"text": "hi"})
    assert down.status_code == 503  # last-known routes are kept: 503, not 404
    error = down.json()["error"]
    assert error["status"] == "UNAVAILABLE"
    assert error["details"][0]["reason"] == "UPSTREAM_UNAVAILABLE"
    assert "127.0.0.1" not in down.text
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"]["details"][0]["metadata"] == {"library": "UNREACHABLE"}

    upstream.start()
    wait_for(lambda: httpx.get(url, params={"text": "hi"}).status_code == 200, "recovery")
    assert httpx.get(url, params={"text": "back"}).json()["text"] == "back"
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    assert gateway.process is not None and gateway.process.pid == gateway_pid


def test_new_rpc_is_routed_and_documented_after_only_the_upstream_restarts(
    stack: StackFactory, tmp_path: Path, copy_protos: Path
) -> None:
    upstream, gateway = stack()
    assert httpx.get(f"{gateway.url}/v1/ping/x").status_code == 404
    assert "/v1/ping/{target}" not in httpx.get(f"{gateway.url}/openapi.json").json()["paths"]

    proto = copy_protos / LIBRARY_PROTO.relative_to(LIBRARY_PROTO.parents[2])
    text = proto.read_text()
    text = text.replace("service LibraryService {", "service LibraryService {" + NEW_RPC, 1)
    proto.write_text(text + NEW_MESSAGES)
    new_gen = compile_protos(copy_protos, tmp_path / "gen-v2")

    upstream.stop()
    upstream.start(gen=new_gen)

    def routed() -> bool:
        return httpx.get(f"{gateway.url}/v1/ping/earth").status_code == 200

    wait_for(routed, "the new route")
    answer = httpx.get(f"{gateway.url}/v1/ping/earth", params={"note": "hello"})
    assert answer.json() == {"target": "earth", "note": "hello"}
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    operation = document["paths"]["/v1/ping/{target}"]["get"]
    assert operation["operationId"] == "gwtest.v1.LibraryService.Ping"
    assert {p["name"] for p in operation["parameters"]} == {"target", "note"}
    assert document["components"]["schemas"]["gwtest.v1.PingResponse"]["properties"]


def test_upstream_started_after_the_gateway_is_picked_up(stack: StackFactory) -> None:
    upstream, gateway = stack(start_upstream=False)
    assert httpx.get(f"{gateway.url}/v1/echo").status_code == 404  # nothing known yet
    assert httpx.get(f"{gateway.url}/readyz").status_code == 503
    upstream.start()
    wait_for(lambda: httpx.get(f"{gateway.url}/v1/echo").status_code == 200, "late upstream")


@pytest.mark.parametrize("reflection", ["v1", "v1alpha"])
def test_either_reflection_version_is_enough(stack: StackFactory, reflection: str) -> None:
    _, gateway = stack(reflection=reflection)
    response = httpx.get(f"{gateway.url}/v1/echo", params={"text": reflection})
    assert response.json()["text"] == reflection
