"""Folio tasks against bare Celery, side by side on one broker, 2 worker processes each.

Folio: EnqueueTask over gRPC (task row + outbox in one transaction), the relay publishes,
the worker claims, runs and records the task, and the client learns of completion by long
poll. Bare Celery: ``delay()`` and ``AsyncResult.get()`` with a Redis result backend.
Reported: enqueue-to-completed latency (one task at a time, p50/p99) and throughput of a
burst of no-op tasks, with the Folio/bare ratio.

Run with ``make bench`` (uses FOLIO_TEST_DATABASE_URL / FOLIO_TEST_REDIS_URL when set,
else embedded PostgreSQL and Redis).
"""

import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
from celery import Celery
from psycopg import sql

from folio.task.v1 import task_service_pb2, task_service_pb2_grpc
from libs.config import Settings
from libs.devstack import migration_targets
from libs.embedded import start_postgres, start_redis
from libs.ids import new_id
from libs.migrations import migrate_all
from libs.secrets import load_secrets
from libs.tasks import TaskContext, task
from libs.tokens import sign_access_token, sign_service_token
from libs.urls import celery_broker_url
from tests.fixtures.engines import claimed_redis_db, replace_database

LATENCY_SAMPLES = 200
BURST = 1000
WORKERS = 2
BARE_QUEUE = "bench-bare"
ROOT = Path(__file__).resolve().parents[2]


@task("bench.noop")
async def noop(_ctx: TaskContext) -> None:
    """Does nothing: what is left is the cost of the task machinery."""
    return None


bare_app = Celery("bench-bare", set_as_current=False)
bare_app.conf.update(
    task_default_queue=BARE_QUEUE,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)
if os.environ.get("FOLIO_BENCH_BARE_BROKER"):
    bare_app.conf.update(
        broker_url=os.environ["FOLIO_BENCH_BARE_BROKER"],
        result_backend=os.environ["FOLIO_BENCH_BARE_BROKER"],
    )


@bare_app.task(name="bench.bare_noop")  # type: ignore[untyped-decorator]
def bare_noop() -> None:
    return None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextlib.contextmanager
def engines() -> Iterator[tuple[str, str]]:
    """A PostgreSQL server URL and a Redis URL: the machine's, else embedded ones."""
    database = os.environ.get("FOLIO_TEST_DATABASE_URL")
    redis_url = os.environ.get("FOLIO_TEST_REDIS_URL")
    stops = []
    directory = Path(tempfile.mkdtemp(prefix="folio-bench-"))
    try:
        if not database:
            postgres = start_postgres(directory / "pg")
            stops.append(postgres.stop)
            database = postgres.url
        if not redis_url:
            redis_server = start_redis(directory / "redis")
            stops.append(redis_server.stop)
            redis_url = redis_server.url
        with claimed_redis_db(redis_url) as url:
            yield database, url
    finally:
        for stop in reversed(stops):
            stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"folio_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = replace_database(server_url, name)
        migrate_all(url, migration_targets())
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        child = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class FolioClient:
    def __init__(self, settings: Settings, address: str, database_url: str) -> None:
        keys = load_secrets(settings)
        self.database_url = database_url
        self.user = new_id()
        self.service = (
            (
                "authorization",
                "Bearer "
                + sign_service_token(keys.internal_token_key, caller="user", audience="task"),
            ),
        )
        self.owner = (
            (
                "authorization",
                "Bearer "
                + sign_access_token(
                    keys.active_key(),
                    issuer=settings.token_issuer,
                    audience=settings.token_audience,
                    user_id=self.user,
                    session_id=new_id(),
                ),
            ),
        )
        self.channel = grpc.aio.insecure_channel(address)
        self.breakdown: dict[str, float] = {}
        self.stub: Any = task_service_pb2_grpc.TaskServiceStub(self.channel)

    async def enqueue(self) -> str:
        reply = await self.stub.EnqueueTask(
            task_service_pb2.EnqueueTaskRequest(
                kind="bench.noop", user_id=self.user, idempotency_key=new_id()
            ),
            metadata=self.service,
        )
        return str(reply.task.task_id)

    async def until_final(self, task_id: str) -> str:
        while True:
            reply = await self.stub.GetTask(
                task_service_pb2.GetTaskRequest(task_id=task_id, wait_seconds=10),
                metadata=self.owner,
            )
            if reply.task.status in ("completed", "failed", "cancelled"):
                return str(reply.task.status)

    async def round_trip(self) -> float:
        started = time.perf_counter()
        status = await self.until_final(await self.enqueue())
        if status != "completed":
            raise RuntimeError(f"bench task ended {status}")
        return time.perf_counter() - started

    def stages(self) -> dict[str, float]:
        """Median seconds from enqueue to the worker's claim, and from claim to the result."""
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY"
                "   extract(epoch FROM started_at - created_at)),"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY"
                "   extract(epoch FROM finished_at - started_at))"
                " FROM tasks.tasks WHERE user_id = %s AND status = 'completed'",
                (self.user,),
            ).fetchone()
        assert row is not None
        return {"queued": float(row[0]), "ran": float(row[1])}

    def wait_completed(self, count: int) -> None:
        while self.completed() < count:
            time.sleep(0.02)

    def completed(self) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM tasks.tasks WHERE user_id = %s AND status = 'completed'",
                (self.user,),
            ).fetchone()
        return int(row[0]) if row else 0


async def bench_folio(
    settings: Settings, address: str, database_url: str
) -> tuple[list[float], float]:
    # The gRPC channel belongs to this event loop, so it is made here.
    client = FolioClient(settings, address, database_url)
    for _ in range(20):
        await client.round_trip()
    latencies = [await client.round_trip() for _ in range(LATENCY_SAMPLES)]
    client.breakdown = await asyncio.to_thread(client.stages)
    before = client.completed()
    started = time.perf_counter()
    gate = asyncio.Semaphore(32)

    async def one() -> None:
        async with gate:
            await client.enqueue()

    await asyncio.gather(*(one() for _ in range(BURST)))
    await asyncio.to_thread(client.wait_completed, before + BURST)
    rate = BURST / (time.perf_counter() - started)
    print(
        f"folio stages (median): enqueue to claimed {client.breakdown['queued'] * 1000:.2f} ms,"
        f" claimed to result {client.breakdown['ran'] * 1000:.2f} ms"
    )
    return latencies, rate


def bench_bare() -> tuple[list[float], float]:
    for _ in range(20):
        bare_noop.delay().get(timeout=30)
    latencies = []
    for _ in range(LATENCY_SAMPLES):
        started = time.perf_counter()
        bare_noop.delay().get(timeout=30)
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    results = [bare_noop.delay() for _ in range(BURST)]
    for result in results:
        result.get(timeout=120)
    return latencies, BURST / (time.perf_counter() - started)


def wait_for_port(address: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return
            except grpc.FutureTimeoutError:
                continue
    raise RuntimeError(f"nothing listens on {address}")


def main() -> None:
    from tests.fixtures.processes import free_port

    with engines() as (server_url, redis_url), fresh_database(server_url) as database_url:
        workdir = Path(tempfile.mkdtemp(prefix="folio-bench-run-"))
        port = free_port()
        broker = celery_broker_url(redis_url)
        env = {
            **os.environ,
            "FOLIO_DATA_DIR": str(workdir / "data"),
            "FOLIO_DATABASE_URL": database_url,
            "FOLIO_REDIS_URL": redis_url,
            "FOLIO_TASK_PORT": str(port),
            "FOLIO_WORKER_IMPORTS": '["tests.bench.bench_tasks"]',
            "FOLIO_LOG_LEVEL": os.environ.get("FOLIO_LOG_LEVEL", "WARNING"),
            "FOLIO_BENCH_BARE_BROKER": broker,
            "PYTHONUNBUFFERED": "1",
        }
        settings = Settings(data_dir=workdir / "data", database_url=database_url, task_port=port)
        load_secrets(settings)  # create the dev secrets before the processes race to
        cli = [sys.executable, "-m", "libs.cli"]
        bare_worker = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.bench.bench_tasks:bare_app",
            "worker",
            "--pool=prefork",
            f"--concurrency={WORKERS}",
            f"--queues={BARE_QUEUE}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ]
        with (
            process([*cli, "serve", "task"], env, workdir / "task.log"),
            process([*cli, "worker", f"--concurrency={WORKERS}"], env, workdir / "worker.log"),
            process(bare_worker, env, workdir / "bare.log"),
        ):
            wait_for_port(f"127.0.0.1:{port}")
            bare_app.conf.update(broker_url=broker, result_backend=broker)
            bare_latencies, bare_rate = bench_bare()
            folio_latencies, folio_rate = asyncio.run(
                bench_folio(settings, f"127.0.0.1:{port}", database_url)
            )
        if not os.environ.get("FOLIO_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}")

    def ms(value: float) -> str:
        return f"{value * 1000:8.2f} ms"

    rows = [
        ("latency p50", percentile(folio_latencies, 0.5), percentile(bare_latencies, 0.5)),
        ("latency p99", percentile(folio_latencies, 0.99), percentile(bare_latencies, 0.99)),
    ]
    print(f"no-op tasks, {WORKERS} worker processes each, broker {redis_url.split('?')[0]}")
    print(f"{'':24}{'folio':>12}{'bare celery':>14}{'folio/bare':>12}")
    for name, folio, bare in rows:
        print(f"{name:24}{ms(folio):>12}{ms(bare):>14}{folio / bare:>11.2f}x")
    print(
        f"{'throughput (burst)':24}{folio_rate:>8.0f} t/s{bare_rate:>10.0f} t/s"
        f"{folio_rate / bare_rate:>11.2f}x"
    )
    print(
        f"(latency: enqueue to completed seen by the client, {LATENCY_SAMPLES} tasks one at a"
        f" time; mean folio {statistics.mean(folio_latencies) * 1000:.2f} ms;"
        f" throughput: {BURST} tasks at once)"
    )


if __name__ == "__main__":
    main()
