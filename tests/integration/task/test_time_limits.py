"""Celery's soft and hard limits, the backstops behind a task's own time limit."""

import asyncio
from collections.abc import Iterator

import pytest
from google.protobuf import json_format

from libs.ids import new_id
from tests.integration.task.conftest import TaskServiceUnderTest, Worker

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("worker")]


@pytest.fixture(scope="module")
def worker(
    task_service: TaskServiceUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """A worker whose Celery limits sit 0.5 s and 1.5 s behind each task's own."""
    running = Worker(
        task_service.settings,
        tmp_path_factory.mktemp("limits-worker") / "worker.log",
        extra_env={
            "FOLIO_TASK_SOFT_LIMIT_MARGIN_SECONDS": "0.5",
            "FOLIO_TASK_HARD_LIMIT_MARGIN_SECONDS": "1.5",
        },
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


async def test_a_task_blocking_its_event_loop_is_stopped_by_the_soft_limit(
    task_service: TaskServiceUnderTest,
) -> None:
    user = new_id()
    queued = await task_service.enqueue("test.blocking", user)
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "failed" and done.attempts == 1
    assert "SoftTimeLimitExceeded" in done.error


async def test_a_task_ignoring_the_soft_limit_is_killed_and_recorded_as_failed(
    task_service: TaskServiceUnderTest, worker: Worker
) -> None:
    user = new_id()
    queued = await task_service.enqueue("test.stubborn", user)
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "failed" and done.attempts == 1
    assert done.error == "hard time limit of 2 s exceeded"
    assert json_format.MessageToDict(done.result) == {
        "success": False,
        "error": "hard time limit of 2 s exceeded",
    }
    # The pool replaces the killed process and goes on working.
    after = await task_service.enqueue("test.echo", user, {"value": 1})
    await task_service.wait_for(after.task.task_id, user, {"completed"})
    for _ in range(300):
        if len(worker.children()) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(worker.children()) == 2
