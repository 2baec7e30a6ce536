"""Account deletion, the user service's side: queue it, and purge the user's row."""

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from folio.task.v1 import task_pb2
from libs.tasks import ACCOUNT_DELETION_KIND
from libs.tasks.queue import TaskQueue
from services.user.handlers import get_user
from services.user.models import User


async def request_deletion(session: AsyncSession, tasks: TaskQueue, user_id: str) -> task_pb2.Task:
    """Queue the deletion of the user's account; asking again returns the same task."""
    await get_user(session, user_id)
    return await tasks.enqueue(
        ACCOUNT_DELETION_KIND,
        user_id=user_id,
        idempotency_key=f"{ACCOUNT_DELETION_KIND}:{user_id}",
    )


async def purge_user(session: AsyncSession, user_id: str) -> int:
    """Delete the user's row, the account itself; a second call deletes nothing."""
    result = await session.execute(delete(User).where(User.id == user_id))
    return int(result.rowcount)  # type: ignore[attr-defined]
