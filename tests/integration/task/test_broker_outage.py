"""The broker going away: queued tasks wait in the outbox, running ones are run again."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from libs.ids import new_id
from tests.integration.task.conftest import TaskServiceUnderTest, Worker
from tests.integration.task.redis_server import RedisServer

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("worker")]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("outage-broker"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def broker_url(redis_server: RedisServer) -> str:
    """This module's task service and worker use the Redis it can stop."""
    return redis_server.url


async def test_a_task_enqueued_while_redis_is_down_runs_once_it_is_back(
    task_service: TaskServiceUnderTest, redis_server: RedisServer, tmp_path: Path
) -> None:
    user = new_id()
    redis_server.stop()
    try:
        queued = await task_service.enqueue("test.echo", user, {"value": 7, "dir": str(tmp_path)})
        assert queued.created and queued.task.status == "pending"
    finally:
        redis_server.start()
    done = (
        await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"}, 60)
    ).task
    assert done.status == "completed" and done.attempts == 1
    assert json_format.MessageToDict(done.result) == {"success": True, "result": 7}
    assert len((tmp_path / f"runs-{done.task_id}").read_text().splitlines()) == 1


async def test_a_task_running_when_the_broker_connection_drops_runs_again_and_completes_once(
    task_service: TaskServiceUnderTest, worker: Worker, redis_server: RedisServer, tmp_path: Path
) -> None:
    user = new_id()
    queued = await task_service.enqueue("test.gated", user, {"dir": str(tmp_path)})
    task_id = queued.task.task_id
    await task_service.wait_until(
        task_id, user, lambda t: (t.status, t.progress) == ("running", 50)
    )
    redis_server.stop()
    try:
        # Celery stops the running task when it loses the broker; the worker puts it back
        # through the outbox, where it waits for Redis.
        pending = await task_service.wait_for(task_id, user, {"pending"}, 60)
        assert pending.task.attempts == 1
    finally:
        redis_server.start()
    runs = tmp_path / f"runs-{task_id}"
    while len(runs.read_text().splitlines()) < 2:
        await task_service.get(task_id, user, wait=1)
    (tmp_path / f"gate-{task_id}").touch()
    done = (await task_service.wait_for(task_id, user, {"completed", "failed"}, 60)).task
    assert done.status == "completed" and done.attempts == 2
    assert json_format.MessageToDict(done.result) == {"success": True, "result": {"effects": 1}}
    assert (tmp_path / f"effect-{task_id}").read_text() == "applied\n"
    assert f"[{task_id}] attempt 1 lost (stopped after the broker connection was lost)" in (
        worker.log()
    )
