"""GET /api/users/me through the gateway vs UserService.GetMe called directly, side by side.

Both paths run against the same user service process, database and token, at the same
concurrency, in one run. The HTTP client is a minimal keep-alive HTTP/1.1 loop on asyncio
streams, so the client's own cost stays comparable to grpc.aio's (C-core) client.
"""

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import uvloop

from folio.user.v1 import user_service_pb2, user_service_pb2_grpc
from libs.config import Settings
from libs.devstack import backing_services, migration_targets
from libs.migrations import migrate_all
from tests.fixtures.stack import Stack

PATH = "/api/users/me"
CONCURRENCY = 32
WARMUP_SECONDS = 1.5
MEASURE_SECONDS = 6.0
ROUNDS = 2  # gateway, direct, gateway, direct: drift on a shared machine hits both alike


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    latencies: list[float]
    seconds: float
    errors: int
    cpu: dict[str, float] = field(default_factory=dict)

    def cpu_per_request(self) -> str:
        return ", ".join(
            f"{name} {seconds / len(self.latencies) * 1e6:.0f} us"
            for name, seconds in self.cpu.items()
        )

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<28} {self.rps:>9.0f} req/s   p50 {self.percentile(0.50):6.2f} ms"
            f"   p99 {self.percentile(0.99):6.2f} ms   ({len(self.latencies)} requests,"
            f" {self.errors} errors)"
        )


Worker = Callable[[float, list[float]], Awaitable[int]]


async def _drive(name: str, worker: Worker, seconds: float, pids: dict[str, int]) -> Result:
    """Run CONCURRENCY copies of ``worker`` for ``seconds``; latencies and server CPU time."""
    latencies: list[float] = []
    cpu_before = {n: cpu_seconds(pid) for n, pid in pids.items()}
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(worker(started + seconds, latencies) for _ in range(CONCURRENCY))
    )
    elapsed = time.perf_counter() - started
    cpu = {n: cpu_seconds(pid) - cpu_before[n] for n, pid in pids.items()}
    return Result(name, latencies, elapsed, sum(errors), cpu)


def http_worker(host: str, port: int, token: str) -> Worker:
    request = (
        f"GET {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
    ).encode()

    async def worker(stop_at: float, latencies: list[float]) -> int:
        reader, writer = await asyncio.open_connection(host, port)
        errors = 0
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                marker = head.lower().find(b"content-length:")
                length = int(head[marker + 15 : head.find(b"\r\n", marker)])
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - now)
                if head[9:12] != b"200" or b'"email"' not in body:
                    errors += 1
        finally:
            writer.close()
        return errors

    return worker


def grpc_worker(stub: user_service_pb2_grpc.UserServiceStub, token: str) -> Worker:
    metadata = (("authorization", f"Bearer {token}"),)
    request = user_service_pb2.GetMeRequest()

    async def worker(stop_at: float, latencies: list[float]) -> int:
        errors = 0
        while (now := time.perf_counter()) < stop_at:
            try:
                call = stub.GetMe(request, metadata=metadata, timeout=10)
                reply = await cast(Awaitable[user_service_pb2.GetMeResponse], call)
                if not reply.user.email:
                    errors += 1
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - now)
        return errors

    return worker


async def measure(stack: Stack, token: str) -> tuple[Result, Result]:
    host, port = "127.0.0.1", int(stack.gateway_url.rsplit(":", 1)[1])
    through_gateway = http_worker(host, port, token)
    pids = {name: stack.processes[name].pid for name in ("gateway", "user")}
    async with grpc.aio.insecure_channel(stack.address("user")) as channel:
        direct = grpc_worker(user_service_pb2_grpc.UserServiceStub(channel), token)
        await _drive("warm-up gateway", through_gateway, WARMUP_SECONDS, pids)
        await _drive("warm-up direct", direct, WARMUP_SECONDS, pids)
        gateway_runs, direct_runs = [], []
        for _ in range(ROUNDS):
            gateway_runs.append(await _drive("gateway", through_gateway, MEASURE_SECONDS, pids))
            direct_runs.append(await _drive("direct", direct, MEASURE_SECONDS, pids))
    return _merge("REST via gateway", gateway_runs), _merge("gRPC direct (grpc.aio)", direct_runs)


def _merge(name: str, runs: list[Result]) -> Result:
    return Result(
        name,
        [latency for run in runs for latency in run.latencies],
        sum(run.seconds for run in runs),
        sum(run.errors for run in runs),
        {n: sum(run.cpu[n] for run in runs) for n in runs[0].cpu},
    )


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="folio-bench-gateway-"))
    try:
        with backing_services(Settings(data_dir=workdir / "engines")) as urls:
            database_url, redis_url = urls["FOLIO_DATABASE_URL"], urls["FOLIO_REDIS_URL"]
            migrate_all(database_url, migration_targets())
            stack = Stack(workdir, database_url, redis_url)
            # Only the service under test: the gateway then polls nothing else.
            stack.env["FOLIO_GATEWAY_UPSTREAMS"] = json.dumps(["user"])
            try:
                stack.start_service("user")
                stack.start_service("gateway")
                token = stack.mint_token("bench@example.com")
                gateway, direct = uvloop.run(measure(stack, token))
            finally:
                stack.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"GET /api/users/me vs UserService.GetMe, concurrency {CONCURRENCY}")
    print(gateway.line())
    print(direct.line())
    print(f"server CPU per request, via gateway: {gateway.cpu_per_request()}")
    print(f"server CPU per request, direct:      {direct.cpu_per_request()}")
    print(
        f"ratio gateway/direct: throughput {gateway.rps / direct.rps:.2f}x,"
        f" p50 latency {gateway.percentile(0.5) / direct.percentile(0.5):.2f}x,"
        f" p99 latency {gateway.percentile(0.99) / direct.percentile(0.99):.2f}x"
    )
    if gateway.errors or direct.errors:
        raise SystemExit("errors during the benchmark")


if __name__ == "__main__":
    main()
