"""Tasks through the real pipeline: EnqueueTask, the outbox relay, Redis, a prefork worker."""

from pathlib import Path

import pytest
from google.protobuf import json_format

from libs.ids import new_id
from tests.integration.task.conftest import TaskServiceUnderTest

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
