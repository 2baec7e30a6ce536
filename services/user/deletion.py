"""Account deletion, the user service's side: queue it, and purge the user's row."""

from typing import TYPE_CHECKING

import grpc
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from folio.task.v1 import task_pb2, task_service_pb2
from libs.errors import InvalidArgument, Unavailable
from libs.ids import is_ulid
from libs.tasks import ACCOUNT_DELETION_KIND
from services.user.handlers import get_user
from services.user.models import User

if TYPE_CHECKING:
    from folio.task.v1.task_service_pb2_grpc import TaskServiceAsyncStub


async def request_deletion(
    session: AsyncSession, tasks: "TaskServiceAsyncStub", user_id: str
) -> task_pb2.Task:
    """Queue the deletion of the user's account; asking again returns the same task."""
    await get_user(session, user_id)
    try:
        reply = await tasks.EnqueueTask(
            task_service_pb2.EnqueueTaskRequest(
                kind=ACCOUNT_DELETION_KIND,
                user_id=user_id,
                idempotency_key=f"{ACCOUNT_DELETION_KIND}:{user_id}",
            )
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise Unavailable("cannot queue the deletion now; try again") from error
        raise
    task: task_pb2.Task = reply.task
    return task


async def purge_user(session: AsyncSession, user_id: str) -> int:
    """Delete the user's row, the account itself; a second call deletes nothing."""
    if not is_ulid(user_id):
        raise InvalidArgument("user_id must be a ULID", field_violations={"user_id": "not a ULID"})
    result = await session.execute(delete(User).where(User.id == user_id))
    return int(result.rowcount)  # type: ignore[attr-defined]
