"""Task use cases: plain functions over a session."""

import asyncio
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import commit
from libs.errors import AlreadyExists, InvalidArgument, NotFound
from libs.ids import is_ulid, new_id
from libs.pagination import page_of, page_request
from libs.tasks import ACCOUNT_DELETION_KIND
from libs.tasks.models import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_STATUSES,
    PENDING,
    RUNNING,
    STATUSES,
    Outbox,
    Task,
)
from services.task.listener import TaskWatchers

MAX_WAIT_SECONDS = 30
MAX_IDEMPOTENCY_KEY = 200
MAX_PARAMS_BYTES = 64 * 1024
KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
# A long poll answers this long before the caller's deadline, so the answer arrives.
DEADLINE_MARGIN_SECONDS = 0.25
# Statuses under which an idempotency key is taken (the partial unique index).
_KEY_HOLDING = (PENDING, RUNNING, COMPLETED)
_KEY_INDEX_PREDICATE = f"idempotency_key IS NOT NULL AND status NOT IN ('{FAILED}', '{CANCELLED}')"


def _not_found() -> NotFound:
    # One message for an unknown id, a malformed one and another user's task alike.
    return NotFound("task not found")


async def get_owned(session: AsyncSession, task_id: str, user_id: str) -> Task:
    """The caller's task, or NOT_FOUND (also for another user's task)."""
    if not is_ulid(task_id):
        raise _not_found()
    task = await session.scalar(select(Task).where(Task.id == task_id, Task.user_id == user_id))
    if task is None:
        raise _not_found()
    return task


def _visible_state(task: Task) -> tuple[str, int, bool]:
    return task.status, task.progress, task.cancel_requested


async def _reload(session: AsyncSession, task_id: str) -> Task | None:
    task = await session.scalar(
        select(Task).where(Task.id == task_id).execution_options(populate_existing=True)
    )
    # End the read's transaction: a waiting poll holds no connection.
    await commit(session)
    return task


def check_wait(wait_seconds: int) -> None:
    if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
        raise InvalidArgument(
            f"wait_seconds must be between 0 and {MAX_WAIT_SECONDS}",
            field_violations={"wait_seconds": f"must be 0 to {MAX_WAIT_SECONDS}"},
        )


async def get_task(
    session: AsyncSession,
    watchers: TaskWatchers,
    task_id: str,
    user_id: str,
    *,
    wait_seconds: int = 0,
    time_remaining: float | None = None,
) -> Task:
    """The caller's task; with ``wait_seconds``, as soon as it changes (or when time is up).

    Ownership is checked once, when the call starts: an account-deletion task loses its
    owner as it completes, and the owner's poll must still see it complete.
    """
    check_wait(wait_seconds)
    if wait_seconds == 0:
        return await get_owned(session, task_id, user_id)
    budget = float(wait_seconds)
    if time_remaining is not None:
        budget = min(budget, time_remaining - DEADLINE_MARGIN_SECONDS)
    deadline = time.monotonic() + budget
    # Subscribed before the first read, so no change slips in between.
    async with watchers.watch(task_id) as changed:
        task = await get_owned(session, task_id, user_id)
        seen = _visible_state(task)
        # A waiting poll holds no database connection.
        await commit(session)
        current: Task | None = task
        while True:
            if current is None:
                raise _not_found()
            if current.status in FINAL_STATUSES or _visible_state(current) != seen:
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return current
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return current
            changed.clear()
            current = await _reload(session, task_id)


async def list_tasks(
    session: AsyncSession, user_id: str, *, status: str, page_size: int, page_token: str
) -> tuple[list[Task], str]:
    """The caller's tasks, newest first (ULIDs sort by time), one keyset page at a time."""
    if status and status not in STATUSES:
        raise InvalidArgument(
            "unknown status", field_violations={"status": f"one of {', '.join(STATUSES)}"}
        )
    page = page_request(page_size, page_token, scope=[status])
    query = select(Task).where(Task.user_id == user_id)
    if status:
        query = query.where(Task.status == status)
    if page.after is not None:
        query = query.where(Task.id < page.after[0])
    tasks = (await session.scalars(query.order_by(Task.id.desc()).limit(page.limit))).all()
    return page_of(tasks, page, lambda task: [task.id])


async def cancel_task(session: AsyncSession, task_id: str, user_id: str) -> Task:
    """Cancel a pending task at once; ask a running one to stop; leave a final one be."""
    task = await get_owned(session, task_id, user_id)
    await session.execute(
        update(Task)
        .where(Task.id == task.id, Task.status == PENDING)
        .values(
            status=CANCELLED,
            cancel_requested=True,
            result={"success": False, "error": "cancelled"},
            error="cancelled",
            finished_at=func.now(),
        )
    )
    await session.execute(
        update(Task).where(Task.id == task.id, Task.status == RUNNING).values(cancel_requested=True)
    )
    refreshed = await _reload_in_transaction(session, task.id)
    assert refreshed is not None
    if refreshed.status == CANCELLED:
        # Nothing left to publish; a message already sent is ignored by the worker.
        await session.execute(delete(Outbox).where(Outbox.task_id == task.id))
    return refreshed


async def _reload_in_transaction(session: AsyncSession, task_id: str) -> Task | None:
    return await session.scalar(
        select(Task).where(Task.id == task_id).execution_options(populate_existing=True)
    )


def _check_enqueue(kind: str, user_id: str, params: Mapping[str, Any], key: str) -> None:
    violations: dict[str, str] = {}
    if not KIND_PATTERN.fullmatch(kind):
        violations["kind"] = "must look like '<domain>.<name>' in lower case"
    if user_id and not is_ulid(user_id):
        violations["user_id"] = "must be a user's ULID"
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        violations["idempotency_key"] = f"required, at most {MAX_IDEMPOTENCY_KEY} characters"
    if len(json.dumps(params)) > MAX_PARAMS_BYTES:
        violations["params"] = f"at most {MAX_PARAMS_BYTES} bytes of JSON"
    if violations:
        raise InvalidArgument("invalid task", field_violations=violations)


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    user_id: str | None,
    params: Mapping[str, Any],
    idempotency_key: str,
) -> tuple[Task, bool]:
    """Write the task and its outbox message in the caller's transaction, once per key."""
    _check_enqueue(kind, user_id or "", params, idempotency_key)
    key_taken = and_(Task.idempotency_key.is_not(None), Task.status.in_(_KEY_HOLDING))
    for _ in range(3):
        task = await session.scalar(
            pg_insert(Task)
            .values(
                id=new_id(),
                user_id=user_id or None,
                kind=kind,
                params=dict(params),
                idempotency_key=idempotency_key,
            )
            .on_conflict_do_nothing(
                index_elements=[Task.idempotency_key],
                # Literal, not bound: a prepared statement's generic plan cannot prove
                # that parameters imply the partial index's predicate.
                index_where=text(_KEY_INDEX_PREDICATE),
            )
            .returning(Task)
        )
        if task is not None:
            await session.execute(insert(Outbox).values(task_id=task.id, kind=kind))
            return task, True
        existing = await session.scalar(
            select(Task).where(Task.idempotency_key == idempotency_key, key_taken)
        )
        if existing is None:
            continue  # it failed or was cancelled in between, which frees the key
        if (existing.kind, existing.user_id, existing.params) != (
            kind,
            user_id or None,
            dict(params),
        ):
            raise AlreadyExists(
                "this idempotency key already names a different task",
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        return existing, False
    raise AlreadyExists("the idempotency key is contended", reason="IDEMPOTENCY_KEY_REUSED")


async def purge_user(session: AsyncSession, user_id: str) -> int:
    """Delete every task of the user except an account deletion still under way."""
    deletion_in_progress = and_(
        Task.kind == ACCOUNT_DELETION_KIND, Task.status.in_((PENDING, RUNNING))
    )
    result = await session.execute(
        delete(Task).where(Task.user_id == user_id, ~deletion_in_progress)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
