"""A task service (with its relay) in this process and a real worker pool as a subprocess."""

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import psycopg
import pytest
from psycopg import sql

from folio.task.v1 import task_service_pb2, task_service_pb2_grpc
from libs.config import Settings
from libs.devstack import migration_targets
from libs.ids import new_id
from libs.migrations import migrate_all
from libs.secrets import Secrets, load_secrets
from libs.service import start_service
from libs.tokens import sign_access_token, sign_service_token
from services.task.server import SERVICE as TASK_SERVICE
from services.task.settings import TaskSettings
from tests.fixtures.engines import claimed_redis_db, replace_database
from tests.fixtures.processes import wait_until

SAMPLE_TASKS = "tests.integration.task.sample_tasks"


@pytest.fixture(scope="module")
def task_database_url(postgres_server_url: str) -> Iterator[str]:
    """A migrated database for this module's service and worker."""
    name = f"folio_task_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    url = replace_database(postgres_server_url, name)
    migrate_all(url, migration_targets())
    try:
        yield url
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def broker_url(redis_url: str) -> Iterator[str]:
    """A Redis database index of this module's own, as the task broker."""
    with claimed_redis_db(redis_url) as url:
        yield url


def task_settings(data_dir: Path, database_url: str, redis_url: str) -> TaskSettings:
    return TaskSettings(
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
        task_retry_backoff_seconds=0.2,
        task_retry_backoff_max_seconds=1.0,
        task_relay_poll_seconds=0.5,
    )


@dataclass
class TaskServiceUnderTest:
    """The running task service and what a test needs to call it."""

    address: str
    settings: Settings
    secrets: Secrets
    channel: grpc.aio.Channel

    @property
    def stub(self) -> Any:
        return task_service_pb2_grpc.TaskServiceStub(self.channel)

    def user_metadata(self, user_id: str) -> tuple[tuple[str, str], ...]:
        token = sign_access_token(
            self.secrets.active_key(),
            issuer=self.settings.token_issuer,
            audience=self.settings.token_audience,
            user_id=user_id,
            session_id=new_id(),
        )
        return (("authorization", f"Bearer {token}"),)

    def service_metadata(self, caller: str = "user") -> tuple[tuple[str, str], ...]:
        token = sign_service_token(self.secrets.internal_token_key, caller=caller, audience="task")
        return (("authorization", f"Bearer {token}"),)

    async def enqueue(
        self, kind: str, user_id: str, params: dict[str, Any] | None = None, key: str = ""
    ) -> task_service_pb2.EnqueueTaskResponse:
        request = task_service_pb2.EnqueueTaskRequest(
            kind=kind, user_id=user_id, idempotency_key=key or new_id()
        )
        request.params.update(params or {})
        reply: task_service_pb2.EnqueueTaskResponse = await self.stub.EnqueueTask(
            request, metadata=self.service_metadata()
        )
        return reply

    async def get(
        self, task_id: str, user_id: str, wait: int = 0
    ) -> task_service_pb2.GetTaskResponse:
        reply: task_service_pb2.GetTaskResponse = await self.stub.GetTask(
            task_service_pb2.GetTaskRequest(task_id=task_id, wait_seconds=wait),
            metadata=self.user_metadata(user_id),
        )
        return reply

    async def wait_for(
        self, task_id: str, user_id: str, statuses: set[str], within: float = 30
    ) -> task_service_pb2.GetTaskResponse:
        """The task once it has one of ``statuses`` (long polls in between)."""
        return await self.wait_until(task_id, user_id, lambda t: t.status in statuses, within)

    async def wait_until(
        self, task_id: str, user_id: str, check: Callable[[Any], bool], within: float = 30
    ) -> task_service_pb2.GetTaskResponse:
        """The task once ``check(task)`` holds.

        Short long polls: one that starts just after the awaited change waits for the
        next change, so each is kept to a second.
        """
        deadline = time.monotonic() + within
        reply = await self.get(task_id, user_id)
        while not check(reply.task):
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} stayed {reply.task.status}")
            reply = await self.get(task_id, user_id, wait=1)
        return reply


@pytest.fixture(scope="module")
async def task_service(
    task_database_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TaskServiceUnderTest]:
    data_dir = tmp_path_factory.mktemp("task-data")
    settings = task_settings(data_dir, task_database_url, broker_url)
    running = await start_service(TASK_SERVICE, settings, address="127.0.0.1:0")
    port = running.port
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield TaskServiceUnderTest(
                f"127.0.0.1:{port}", settings, load_secrets(settings), channel
            )
    finally:
        await running.stop(grace=0)


class Worker:
    """``folio worker`` as a subprocess, logging to a file."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self.env = {
            **os.environ,
            "FOLIO_DATA_DIR": str(settings.data_dir),
            "FOLIO_DATABASE_URL": settings.database_url or "",
            "FOLIO_REDIS_URL": settings.redis_url or "",
            "FOLIO_WORKER_IMPORTS": f'["{SAMPLE_TASKS}"]',
            "FOLIO_TASK_RETRY_BACKOFF_SECONDS": str(settings.task_retry_backoff_seconds),
            "FOLIO_TASK_RETRY_BACKOFF_MAX_SECONDS": str(settings.task_retry_backoff_max_seconds),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "libs.cli", "worker", f"--concurrency={self.concurrency}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: len(self.children()) == self.concurrency and self.ready(), 60, "worker")

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited: {self.log()}")
        return " ready." in self.log()

    def children(self) -> list[int]:
        assert self.process is not None
        try:
            return [c.pid for c in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def worker(
    task_service: TaskServiceUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    running = Worker(task_service.settings, tmp_path_factory.mktemp("worker") / "worker.log")
    running.start()
    try:
        yield running
    finally:
        running.stop()
