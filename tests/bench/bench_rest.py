"""GET /api/users/me: Folio (gateway -> user service) against the FastAPI monolith it replaces.

Both sides run on this machine against one embedded PostgreSQL holding the same user and
token, are driven by wrk at the same concurrency, warmed up, and measured in alternating
rounds. The monolith gets as many worker processes as Folio runs for the work (gateway +
user service = 2). Reported per side: req/s, p50, p99, and CPU time per request of every
process on the path (the load generator excluded), with the Folio/monolith ratios.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from libs.config import Settings
from libs.devstack import migration_targets
from libs.embedded import start_postgres, start_redis
from libs.migrations import migrate_all
from libs.secrets import load_secrets
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.stack import Stack

PATH = "/api/users/me"
CONNECTIONS = 32
THREADS = 2
WARMUP_SECONDS = 3
MEASURE_SECONDS = 8
ROUNDS = 3
MONOLITH_WORKERS = 2


@dataclass
class Run:
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def cpu_us(self) -> dict[str, float]:
        return {name: seconds / self.requests * 1e6 for name, seconds in self.cpu.items()}

    def line(self, name: str) -> str:
        cpu = self.cpu_us()
        parts = ", ".join(f"{n} {us:.0f}" for n, us in cpu.items())
        return (
            f"{name:<26} {self.rps:>7.0f} req/s  p50 {median(self.p50):6.2f} ms"
            f"  p99 {median(self.p99):6.2f} ms  errors {self.errors}\n"
            f"{'':<26} CPU us/request: {parts}; total {sum(cpu.values()):.0f}"
        )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, token: str, seconds: int) -> tuple[int, float, int, float, float]:
    """(requests, seconds, errors, p50 ms, p99 ms) of one wrk run."""
    out = subprocess.run(
        [
            "wrk",
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests, elapsed = re.search(r"(\d+) requests in ([\d.]+)(ms|s)", out).group(1, 2)  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    failed = (int(errors.group(1)) if errors else 0) + (
        sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    )
    return int(requests), float(elapsed), failed, _ms(latency["50"]), _ms(latency["99"])


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class Side:
    """One server under test and the processes whose CPU time it costs."""

    def __init__(self, url: str, groups: dict[str, int]) -> None:
        self.url = url
        self.groups = groups  # name -> root pid (its children counted with it)
        self.total = Run()

    def _processes(self) -> dict[str, list[psutil.Process]]:
        tree = {}
        for name, pid in self.groups.items():
            root = psutil.Process(pid)
            tree[name] = [root, *root.children(recursive=True)]
        return tree

    def measure(self, token: str, seconds: int) -> None:
        before = {n: cpu_seconds(p) for n, p in self._processes().items()}
        requests, elapsed, errors, p50, p99 = wrk(self.url, token, seconds)
        after = {n: cpu_seconds(p) for n, p in self._processes().items()}
        run = self.total
        run.requests += requests
        run.seconds += elapsed
        run.errors += errors
        run.p50.append(p50)
        run.p99.append(p99)
        for name in after:
            run.cpu[name] = run.cpu.get(name, 0.0) + after[name] - before[name]


def start_monolith(workdir: Path, database_url: str, settings: Settings) -> subprocess.Popen[bytes]:
    port = free_port()
    secrets = load_secrets(settings)
    env = {
        **os.environ,
        "MONOLITH_DATABASE_URL": database_url.replace("postgresql://", "postgresql+psycopg://", 1),
        "MONOLITH_PUBLIC_KEY": secrets.active_key()
        .private_key()
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        "MONOLITH_ISSUER": settings.token_issuer,
        "MONOLITH_AUDIENCE": settings.token_audience,
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.bench.monolith:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(MONOLITH_WORKERS),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=open(workdir / "monolith.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    process.port = port  # type: ignore[attr-defined]
    return process


def main() -> None:
    if shutil.which("wrk") is None:
        print("skipped: wrk is not installed (e.g. apt-get install wrk)")
        return
    workdir = Path(tempfile.mkdtemp(prefix="folio-bench-rest-"))
    postgres = start_postgres(workdir / "engines")
    redis = start_redis(workdir / "engines")
    stack: Stack | None = None
    monolith: subprocess.Popen[bytes] | None = None
    try:
        migrate_all(postgres.url, migration_targets())
        stack = Stack(workdir, postgres.url, redis.url)
        stack.env["FOLIO_GATEWAY_UPSTREAMS"] = '["user"]'
        stack.start_service("user")
        stack.start_service("gateway")
        token = stack.mint_token("bench@example.com")
        monolith = start_monolith(workdir, postgres.url, stack.settings)
        monolith_url = f"http://127.0.0.1:{monolith.port}{PATH}"  # type: ignore[attr-defined]
        wait_until(lambda: _answers(monolith_url, token), 60, "the monolith to answer")
        engines = {"postgres": postgres.pid, "redis": redis.pid}
        folio = Side(
            f"{stack.gateway_url}{PATH}",
            {
                "gateway": stack.processes["gateway"].pid,
                "user": stack.processes["user"].pid,
                **engines,
            },
        )
        mono = Side(monolith_url, {"monolith": monolith.pid, **engines})
        for side in (folio, mono):
            wrk(side.url, token, WARMUP_SECONDS)
        for _ in range(ROUNDS):
            folio.measure(token, MEASURE_SECONDS)
            mono.measure(token, MEASURE_SECONDS)
    finally:
        if monolith is not None:
            monolith.terminate()
            monolith.wait(30)
        if stack is not None:
            stack.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    f, m = folio.total, mono.total
    print(
        f"GET {PATH}, wrk {THREADS} threads x {CONNECTIONS} connections, "
        f"{ROUNDS} alternating rounds of {MEASURE_SECONDS} s"
    )
    print(f.line("Folio (gateway + user)"))
    print(m.line(f"monolith ({MONOLITH_WORKERS} workers)"))
    print(
        f"ratio Folio/monolith: throughput {f.rps / m.rps:.2f}x (target >= 1.5x),"
        f" p99 {median(f.p99) / median(m.p99):.2f}x (target <= 0.5x),"
        f" CPU/request {sum(f.cpu_us().values()) / sum(m.cpu_us().values()):.2f}x"
    )
    if f.errors or m.errors:
        raise SystemExit("errors during the benchmark")


def _answers(url: str, token: str) -> bool:
    try:
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
