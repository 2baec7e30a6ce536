"""The task row's state machine: claim, refuse, retry, record; and lost-attempt recovery.

Deliveries (in a worker child) move a task with SQLAlchemy on the connection that holds
the task's advisory lock. The worker's main process records attempts that ended outside
the task (a killed child, a hard time limit, a lost broker) with short-lived psycopg
connections, since it forks children at any moment.
"""

import datetime as dt
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.config import Settings
from libs.tasks.author import REGISTRY, TaskContext, TaskSpec
from libs.tasks.models import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_STATUSES,
    PENDING,
    RUNNING,
    Outbox,
    Task,
)
from libs.urls import libpq_url

if TYPE_CHECKING:
    from libs.tasks.runtime import ChildRuntime

log = logging.getLogger("folio.tasks")

# A second delivery of a task waits this long for the attempt holding the task's lock:
# long enough for a killed child's database session to go away, short enough not to
# tie up a worker process behind a live attempt (whose own message is still unacked).
LOCK_WAIT = "10s"


def lock_key(task_id: str) -> int:
    """The task's signed 64-bit advisory lock key."""
    digest = hashlib.sha256(f"folio.task:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def claim(
    conn: AsyncConnection, spec: TaskSpec, task_id: str, runtime: "ChildRuntime"
) -> "TaskContext | str":
    """Lock the task and mark it running; or decide it must not run, and say how it ended."""
    key = lock_key(task_id)
    max_attempts = spec.attempts(runtime.settings)
    await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
    try:
        await conn.execute(select(func.pg_advisory_lock(key)))
    except sa_exc.OperationalError as error:
        await conn.rollback()
        if isinstance(error.orig, psycopg.errors.LockNotAvailable):
            log.warning("another attempt holds this task; leaving it to that attempt")
            return "skipped"
        raise
    row = (
        await conn.execute(
            update(Task)
            .where(
                Task.id == task_id,
                Task.status.in_((PENDING, RUNNING)),
                Task.cancel_requested.is_(False),
                Task.attempts < max_attempts,
            )
            .values(
                status=RUNNING,
                attempts=Task.attempts + 1,
                started_at=func.coalesce(Task.started_at, func.now()),
                error="",
            )
            .returning(Task.kind, Task.user_id, Task.params, Task.attempts)
        )
    ).one_or_none()
    if row is None:
        outcome = await refuse(conn, task_id)
        await conn.execute(select(func.pg_advisory_unlock(key)))
        await conn.commit()
        return outcome
    await conn.commit()
    if row.attempts > 1:
        log.warning("attempt %d: the task runs again after a lost or failed attempt", row.attempts)
    return TaskContext(
        task_id=task_id,
        kind=row.kind,
        user_id=row.user_id,
        params=dict(row.params or {}),
        attempt=row.attempts,
        runtime=runtime,
    )


async def refuse(conn: AsyncConnection, task_id: str) -> str:
    """Why a delivery must not run the task, recorded when that ends the task."""
    row = (
        await conn.execute(
            select(Task.status, Task.cancel_requested, Task.attempts, Task.error).where(
                Task.id == task_id
            )
        )
    ).one_or_none()
    if row is None:
        log.warning("no such task (purged?); message dropped")
        return "skipped"
    if row.status in FINAL_STATUSES:
        log.info("already %s; duplicate delivery ignored", row.status)
        return "skipped"
    if row.cancel_requested:
        await record(conn, task_id, CANCELLED, {"success": False, "error": "cancelled"})
        return CANCELLED
    error = f"gave up after {row.attempts} attempts" + (
        f"; last error: {row.error}" if row.error else ""
    )
    await record(conn, task_id, FAILED, {"success": False, "error": error})
    return FAILED


async def schedule_retry(
    conn: AsyncConnection, spec: TaskSpec, task_id: str, error: str, delay: float
) -> str:
    """Back to pending, with an outbox message due after the backoff (durable, like enqueue)."""
    moved = await conn.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == RUNNING)
        .values(status=PENDING, error=error)
    )
    if not moved.rowcount:
        log.warning("could not schedule a retry: the task is gone or no longer running")
        return "skipped"
    await conn.execute(
        insert(Outbox).values(
            task_id=task_id,
            kind=spec.kind,
            available_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay),
        )
    )
    return PENDING


async def record(
    conn: AsyncConnection,
    task_id: str,
    status: str,
    result: dict[str, Any],
    *,
    detach_owner: bool = False,
) -> str:
    """Write a final status and its result dict (in the caller's transaction)."""
    values: dict[str, Any] = {
        "status": status,
        "result": result,
        "error": "" if result.get("success") else str(result.get("error") or ""),
        "finished_at": dt.datetime.now(dt.UTC),
    }
    if status == COMPLETED:
        values["progress"] = 100
    if detach_owner:
        # An anonymous receipt: nothing in it may name the user any more.
        values.update(user_id=None, params={}, idempotency_key=None)
    done = await conn.execute(
        update(Task).where(Task.id == task_id, Task.status.in_((PENDING, RUNNING))).values(**values)
    )
    if not done.rowcount:
        log.warning("could not record %s: the task is gone or already final", status)
        return "skipped"
    log.info("%s", status if status != FAILED else f"failed: {values['error']}")
    return status


async def release(conn: AsyncConnection, task_id: str) -> None:
    """Release the task's advisory lock and commit what the delivery recorded."""
    await conn.execute(select(func.pg_advisory_unlock(lock_key(task_id))))
    await conn.commit()


# --------------------------------------------------------------------------- main process


def _fail_sync(conn: psycopg.Connection[Any], task_id: str, error: str, *statuses: str) -> int:
    """Fail the task if it is in one of ``statuses``; how many rows changed."""
    cursor = conn.execute(
        "UPDATE tasks.tasks SET status = %s, error = %s, result = %s,"
        " finished_at = now(), updated_at = now() WHERE id = %s AND status = ANY(%s)",
        (FAILED, error, json.dumps({"success": False, "error": error}), task_id, list(statuses)),
    )
    return cursor.rowcount


def record_lost_attempt(
    settings: Settings, task_id: str, reason: str, *, retry: bool, via_outbox: bool
) -> None:
    """Record an attempt that ended outside the task, from the worker's main process.

    With ``retry`` the task goes back to pending (a redelivery, or the outbox message
    written here, runs it again); otherwise, or once its attempts are used up, it fails.
    A short-lived connection each time: the main process forks new children at any moment,
    and must not hand them an open database session.
    """
    if not settings.database_url:
        return
    spec = None
    prefix = f"[{task_id}] "
    try:
        with psycopg.connect(libpq_url(settings.database_url)) as conn:
            row = conn.execute(
                "SELECT kind, attempts FROM tasks.tasks WHERE id = %s AND status = %s FOR UPDATE",
                (task_id, RUNNING),
            ).fetchone()
            if row is None:
                return
            kind, attempts = row
            spec = REGISTRY.get(kind)
            max_attempts = spec.attempts(settings) if spec else settings.task_max_attempts
            if retry and attempts < max_attempts:
                conn.execute(
                    "UPDATE tasks.tasks SET status = %s, error = %s, updated_at = now()"
                    " WHERE id = %s",
                    (PENDING, f"attempt {attempts}: {reason}", task_id),
                )
                if via_outbox:
                    conn.execute(
                        "INSERT INTO tasks.outbox (task_id, kind) VALUES (%s, %s)",
                        (task_id, kind),
                    )
                log.warning("%sattempt %d lost (%s); it will run again", prefix, attempts, reason)
                return
            error = reason if not retry else f"gave up after {attempts} attempts: {reason}"
            _fail_sync(conn, task_id, error, RUNNING)
            log.error("%sfailed: %s", prefix, error)
    except psycopg.Error:
        log.exception("%scannot record the lost attempt (%s)", prefix, reason)


def task_id_of(args: Any) -> str | None:
    """The Folio task id a Celery message carries as its first argument."""
    if isinstance(args, list | tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def fail_unknown_kind(settings: Settings, message: Any, kind: str) -> None:
    """Fail a task no worker of this deployment can run, rather than leave it pending."""
    try:
        task_id = task_id_of(message.decode()[0])
    except (TypeError, ValueError, IndexError, KeyError):
        task_id = None
    if task_id is None or not settings.database_url:
        return
    error = f"no worker knows task kind {kind!r}"
    try:
        with psycopg.connect(libpq_url(settings.database_url)) as conn:
            _fail_sync(conn, task_id, error, PENDING, RUNNING)
    except psycopg.Error:
        log.exception("[%s] cannot record the unknown task kind %s", task_id, kind)
        return
    log.error("[%s] failed: %s", task_id, error)
