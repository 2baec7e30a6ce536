"""Tasks through the real pipeline: EnqueueTask, the outbox relay, Redis, a prefork worker."""

import os
import signal
from pathlib import Path

import pytest
from google.protobuf import json_format

from libs.ids import new_id
from tests.integration.task.conftest import TaskServiceUnderTest, Worker

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("worker")]


async def test_a_task_runs_once_and_stores_its_result_dict(
    task_service: TaskServiceUnderTest, tmp_path: Path
) -> None:
    user = new_id()
    queued = await task_service.enqueue(
        "test.echo", user, {"value": {"a": 1}, "dir": str(tmp_path)}
    )
    assert queued.created and queued.task.status == "pending"
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "completed"
    assert json_format.MessageToDict(done.result) == {"success": True, "result": {"a": 1}}
    assert done.progress == 100 and done.attempts == 1 and done.error == ""
    assert done.started_at.ToDatetime() <= done.finished_at.ToDatetime()
    assert len((tmp_path / f"runs-{done.task_id}").read_text().splitlines()) == 1


async def test_a_task_that_raises_fails_with_its_error_and_is_not_retried(
    task_service: TaskServiceUnderTest,
) -> None:
    user = new_id()
    queued = await task_service.enqueue("test.fail", user, {"message": "disk full"})
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "failed" and done.attempts == 1
    assert done.error == "ValueError: disk full"
    assert json_format.MessageToDict(done.result) == {
        "success": False,
        "error": "ValueError: disk full",
    }
    assert done.finished_at.seconds > 0


async def test_a_task_may_report_failure_by_returning_it(
    task_service: TaskServiceUnderTest,
) -> None:
    user = new_id()
    queued = await task_service.enqueue("test.failure_dict", user)
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "failed" and done.error == "no such document"
    assert json_format.MessageToDict(done.result) == {
        "success": False,
        "error": "no such document",
    }


async def test_transient_errors_are_retried_with_backoff_until_they_pass(
    task_service: TaskServiceUnderTest, tmp_path: Path
) -> None:
    user = new_id()
    params = {"dir": str(tmp_path), "ok_on_attempt": 2}
    queued = await task_service.enqueue("test.flaky", user, params)
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "completed" and done.attempts == 2
    assert json_format.MessageToDict(done.result) == {"success": True, "result": {"attempt": 2}}
    assert len((tmp_path / f"runs-{done.task_id}").read_text().splitlines()) == 2


async def test_retries_are_bounded(task_service: TaskServiceUnderTest, tmp_path: Path) -> None:
    user = new_id()
    params = {"dir": str(tmp_path), "ok_on_attempt": 99}
    queued = await task_service.enqueue("test.flaky", user, params)
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "failed" and done.attempts == 3
    assert "peer unavailable on attempt 3" in done.error
    assert len((tmp_path / f"runs-{done.task_id}").read_text().splitlines()) == 3


async def test_a_task_over_its_time_limit_fails(task_service: TaskServiceUnderTest) -> None:
    user = new_id()
    queued = await task_service.enqueue("test.slow", user)
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "failed" and done.error == "time limit of 1 s exceeded"


async def test_a_kind_no_worker_knows_fails_instead_of_staying_pending(
    task_service: TaskServiceUnderTest,
) -> None:
    user = new_id()
    queued = await task_service.enqueue("test.nobody_runs_this", user)
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "failed"
    assert done.error == "no worker knows task kind 'test.nobody_runs_this'"


async def test_a_task_whose_worker_process_is_killed_completes_once_after_redelivery(
    task_service: TaskServiceUnderTest, worker: Worker, tmp_path: Path
) -> None:
    user = new_id()
    queued = await task_service.enqueue("test.gated", user, {"dir": str(tmp_path)})
    task_id = queued.task.task_id
    runs = tmp_path / f"runs-{task_id}"
    await task_service.wait_until(
        task_id, user, lambda t: (t.status, t.progress) == ("running", 50)
    )
    first_attempt, pid = runs.read_text().split()
    assert first_attempt == "1" and int(pid) in worker.children()
    os.kill(int(pid), signal.SIGKILL)
    # The message comes back and another process runs the task again, from the start.
    while len(runs.read_text().splitlines()) < 2:
        await task_service.get(task_id, user, wait=1)
    (tmp_path / f"gate-{task_id}").touch()
    done = (await task_service.wait_for(task_id, user, {"completed", "failed"})).task
    assert done.status == "completed" and done.attempts == 2
    assert json_format.MessageToDict(done.result) == {"success": True, "result": {"effects": 1}}
    lines = [line.split() for line in runs.read_text().splitlines()]
    assert [attempt for attempt, _ in lines] == ["1", "2"]
    assert lines[0][1] != lines[1][1]
    assert (tmp_path / f"effect-{task_id}").read_text() == "applied\n"
    assert f"[{task_id}] attempt 1 lost" in worker.log()
