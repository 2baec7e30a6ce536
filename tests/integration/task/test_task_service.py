"""TaskService over real gRPC: enqueue, get (and long-poll), list, cancel, purge."""

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from folio.purge.v1 import purge_service_pb2, purge_service_pb2_grpc
from folio.task.v1 import task_service_pb2
from libs.ids import new_id
from tests.integration.task.conftest import TaskServiceUnderTest

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("worker")]


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def running(svc: TaskServiceUnderTest, task_id: str, user: str) -> None:
    """Wait until the gated task is running and has applied its effect (progress 50)."""
    await svc.wait_until(task_id, user, lambda t: (t.status, t.progress) == ("running", 50))


async def test_enqueue_is_idempotent_per_key(task_service: TaskServiceUnderTest) -> None:
    user = new_id()
    key = f"test.echo:{new_id()}"
    first = await task_service.enqueue("test.echo", user, {"value": 1}, key=key)
    again = await task_service.enqueue("test.echo", user, {"value": 1}, key=key)
    assert first.created and not again.created
    assert again.task.task_id == first.task.task_id
    error = await rpc_error(task_service.enqueue("test.echo", user, {"value": 2}, key=key))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(error).reason == "IDEMPOTENCY_KEY_REUSED"
    with psycopg.connect(task_service.settings.database_url or "") as conn:
        rows = conn.execute(
            "SELECT count(*) FROM tasks.tasks WHERE idempotency_key = %s", (key,)
        ).fetchone()
    assert rows == (1,)


async def test_a_failed_task_frees_its_key_for_a_new_attempt(
    task_service: TaskServiceUnderTest,
) -> None:
    user = new_id()
    key = f"test.fail:{new_id()}"
    first = await task_service.enqueue("test.fail", user, {"message": "once"}, key=key)
    await task_service.wait_for(first.task.task_id, user, {"failed"})
    second = await task_service.enqueue("test.fail", user, {"message": "once"}, key=key)
    assert second.created and second.task.task_id != first.task.task_id


@pytest.mark.parametrize(
    ("kind", "key", "field"),
    [("Not A Kind", "k", "kind"), ("test.echo", "", "idempotency_key")],
)
async def test_enqueue_rejects_malformed_requests(
    task_service: TaskServiceUnderTest, kind: str, key: str, field: str
) -> None:
    request = task_service_pb2.EnqueueTaskRequest(kind=kind, user_id=new_id(), idempotency_key=key)
    error = await rpc_error(
        task_service.stub.EnqueueTask(request, metadata=task_service.service_metadata())
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "") or error_info(error).reason == "INVALID_ARGUMENT"


async def test_enqueue_is_for_services_only(task_service: TaskServiceUnderTest) -> None:
    user = new_id()
    request = task_service_pb2.EnqueueTaskRequest(
        kind="test.echo", user_id=user, idempotency_key=new_id()
    )
    error = await rpc_error(
        task_service.stub.EnqueueTask(request, metadata=task_service.user_metadata(user))
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_another_users_task_is_not_found_exactly_like_an_unknown_id(
    task_service: TaskServiceUnderTest,
) -> None:
    owner, other = new_id(), new_id()
    task_id = (await task_service.enqueue("test.echo", owner)).task.task_id
    assert (await task_service.get(task_id, owner)).task.task_id == task_id
    answers = []
    for candidate in (task_id, new_id(), "not-a-ulid"):
        for call in (
            task_service.stub.GetTask(
                task_service_pb2.GetTaskRequest(task_id=candidate),
                metadata=task_service.user_metadata(other),
            ),
            task_service.stub.CancelTask(
                task_service_pb2.CancelTaskRequest(task_id=candidate),
                metadata=task_service.user_metadata(other),
            ),
        ):
            error = await rpc_error(call)
            info = error_info(error)
            answers.append((error.code(), error.details(), info.reason, dict(info.metadata)))
    assert answers[0][0] == grpc.StatusCode.NOT_FOUND
    assert all(answer == answers[0] for answer in answers)


async def test_list_tasks_pages_newest_first_and_filters_by_status(
    task_service: TaskServiceUnderTest,
) -> None:
    user = new_id()
    ids = []
    for kind in ("test.echo", "test.fail", "test.echo", "test.fail", "test.echo"):
        ids.append((await task_service.enqueue(kind, user)).task.task_id)
    for task_id in ids:
        await task_service.wait_for(task_id, user, {"completed", "failed"})
    await task_service.enqueue("test.echo", new_id())  # someone else's

    async def page(size: int, token: str = "", status: str = "") -> Any:
        return await task_service.stub.ListTasks(
            task_service_pb2.ListTasksRequest(page_size=size, page_token=token, status=status),
            metadata=task_service.user_metadata(user),
        )

    seen, token = [], ""
    while True:
        reply = await page(2, token)
        assert len(reply.tasks) <= 2
        seen += [t.task_id for t in reply.tasks]
        token = reply.next_page_token
        if not token:
            break
    assert seen == sorted(ids, reverse=True)
    failed = await page(0, status="failed")
    assert sorted(t.task_id for t in failed.tasks) == sorted([ids[1], ids[3]])
    assert all(t.status == "failed" for t in failed.tasks)
    for bad in (page(2, status="finished"), page(2, token="garbage"), page(-1)):
        assert (await rpc_error(bad)).code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cancelling_a_pending_task_means_it_never_runs(
    task_service: TaskServiceUnderTest, tmp_path: Path
) -> None:
    user = new_id()
    params = {"dir": str(tmp_path)}
    # Occupy both worker processes, so the next task waits in the queue.
    blockers = [(await task_service.enqueue("test.gated", user, params)).task for _ in range(2)]
    for blocker in blockers:
        await running(task_service, blocker.task_id, user)
    queued = (await task_service.enqueue("test.echo", user, {**params, "value": 1})).task
    cancelled = await task_service.stub.CancelTask(
        task_service_pb2.CancelTaskRequest(task_id=queued.task_id),
        metadata=task_service.user_metadata(user),
    )
    assert cancelled.task.status == "cancelled" and cancelled.task.cancel_requested
    for blocker in blockers:
        (tmp_path / f"gate-{blocker.task_id}").touch()
    # A task queued after the cancelled one completing means the cancelled one was
    # delivered too (the queue is first in, first out) and skipped.
    marker = (await task_service.enqueue("test.echo", user, {"value": 2})).task
    await task_service.wait_for(marker.task_id, user, {"completed"})
    for blocker in blockers:
        await task_service.wait_for(blocker.task_id, user, {"completed"})
    final = (await task_service.get(queued.task_id, user)).task
    assert final.status == "cancelled" and final.attempts == 0
    assert json_format.MessageToDict(final.result) == {"success": False, "error": "cancelled"}
    assert not (tmp_path / f"runs-{queued.task_id}").exists()


async def test_cancelling_a_running_task_stops_it_at_its_next_step(
    task_service: TaskServiceUnderTest, tmp_path: Path
) -> None:
    user = new_id()
    task = (await task_service.enqueue("test.gated", user, {"dir": str(tmp_path)})).task
    await running(task_service, task.task_id, user)
    reply = await task_service.stub.CancelTask(
        task_service_pb2.CancelTaskRequest(task_id=task.task_id),
        metadata=task_service.user_metadata(user),
    )
    assert reply.task.status == "running" and reply.task.cancel_requested
    final = (await task_service.wait_for(task.task_id, user, {"cancelled", "completed"})).task
    assert final.status == "cancelled"
    assert json_format.MessageToDict(final.result) == {"success": False, "error": "cancelled"}
    again = await task_service.stub.CancelTask(
        task_service_pb2.CancelTaskRequest(task_id=task.task_id),
        metadata=task_service.user_metadata(user),
    )
    assert again.task.status == "cancelled"


async def test_a_long_poll_returns_within_100_ms_of_the_task_completing(
    task_service: TaskServiceUnderTest, tmp_path: Path
) -> None:
    user = new_id()
    task = (await task_service.enqueue("test.gated", user, {"dir": str(tmp_path)})).task
    await running(task_service, task.task_id, user)
    poll = asyncio.ensure_future(task_service.get(task.task_id, user, wait=20))
    await asyncio.sleep(0.2)  # let the poll start waiting; it would return early otherwise
    assert not poll.done()
    (tmp_path / f"gate-{task.task_id}").touch()
    reply = await poll
    answered_at = dt.datetime.now(dt.UTC)
    assert reply.task.status == "completed"
    completed_at = reply.task.finished_at.ToDatetime(tzinfo=dt.UTC)
    # finished_at is taken just before the worker's UPDATE, so this overstates the delay.
    assert answered_at - completed_at < dt.timedelta(milliseconds=100), answered_at - completed_at


async def test_a_long_poll_with_no_change_answers_with_the_same_state_in_time(
    task_service: TaskServiceUnderTest, tmp_path: Path
) -> None:
    user = new_id()
    task = (await task_service.enqueue("test.gated", user, {"dir": str(tmp_path)})).task
    await running(task_service, task.task_id, user)
    quiet = await task_service.get(task.task_id, user, wait=1)
    assert (quiet.task.status, quiet.task.progress) == ("running", 50)
    # A deadline shorter than wait_seconds still gets an answer, not DEADLINE_EXCEEDED.
    short = await task_service.stub.GetTask(
        task_service_pb2.GetTaskRequest(task_id=task.task_id, wait_seconds=30),
        metadata=task_service.user_metadata(user),
        timeout=1.5,
    )
    assert short.task.status == "running"
    too_long = task_service.stub.GetTask(
        task_service_pb2.GetTaskRequest(task_id=task.task_id, wait_seconds=31),
        metadata=task_service.user_metadata(user),
    )
    assert (await rpc_error(too_long)).code() == grpc.StatusCode.INVALID_ARGUMENT
    (tmp_path / f"gate-{task.task_id}").touch()
    await task_service.wait_for(task.task_id, user, {"completed"})


async def test_purge_user_data_deletes_every_task_of_the_user_and_is_idempotent(
    task_service: TaskServiceUnderTest,
) -> None:
    user, bystander = new_id(), new_id()
    mine = [(await task_service.enqueue("test.echo", user)).task.task_id for _ in range(2)]
    theirs = (await task_service.enqueue("test.echo", bystander)).task.task_id
    for task_id in mine:
        await task_service.wait_for(task_id, user, {"completed"})

    async def purge() -> int:
        reply = await purge_service_pb2_grpc.PurgeServiceStub(task_service.channel).PurgeUserData(
            purge_service_pb2.PurgeUserDataRequest(user_id=user),
            metadata=task_service.service_metadata(),
        )
        return int(reply.deleted_count)

    assert await purge() == 2
    assert await purge() == 0
    for task_id in mine:
        error = await rpc_error(task_service.get(task_id, user))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert (await task_service.get(theirs, bystander)).task.task_id == theirs
