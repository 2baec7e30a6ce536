"""The worker runtime: runs Folio tasks in Celery's prefork children and records every attempt.

A message carries only a task id. Each delivery takes a per-task advisory lock (so two
deliveries never run one task at once), claims the row (pending, or running after a lost
attempt), runs the task under its time limit, and writes the final status with the
``{"success": ..., "result" | "error": ...}`` dict. Transient faults are retried through
the outbox with backoff and jitter, a bounded number of times. Whatever ends an attempt
outside the task (a killed child, a hard time limit, a broker connection loss) is
recorded by the worker's main process, so no task stays ``running`` once the worker has
given up on it.
"""

import asyncio
import contextvars
import datetime as dt
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
import redis.exceptions
from billiard.exceptions import WorkerLostError  # type: ignore[import-untyped]
from celery import Celery
from celery import Task as CeleryTask
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker.request import Request
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.config import Settings
from libs.db import Database, configure_default_database, get_db_context
from libs.errors import Unavailable
from libs.grpc_client import service_channel
from libs.secrets import load_secrets
from libs.tasks.app import TimeLimits
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

log = logging.getLogger("folio.tasks")

task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)

TRANSIENT_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
# A second delivery of a task waits this long for the attempt holding the task's lock:
# long enough for a killed child's database session to go away, short enough not to
# tie up a worker process behind a live attempt (whose own message is still unacked).
LOCK_WAIT = "10s"
# How long a worker process pauses before giving a message back when the database is down.
DATABASE_RETRY_PAUSE_SECONDS = 2.0
# What a task may say about itself in the {"success": ..., ...} dict.
_ENVELOPE_KEYS = frozenset({"success", "result", "error"})
_MAX_ERROR_CHARS = 2000


class TaskCancelled(Exception):
    """The task's owner cancelled it; raised at the task's next step."""


class TransientError(Exception):
    """A fault worth another attempt (a peer down, a timeout)."""


TaskFunction = Callable[["TaskContext"], Awaitable[Any]]


@dataclass(frozen=True)
class TaskSpec:
    """A registered kind of task and how it runs."""

    kind: str
    function: TaskFunction
    time_limit: float | None = None
    max_attempts: int | None = None
    # Account deletion leaves its task as an anonymous receipt: no owner once it is done.
    detach_owner_on_success: bool = False

    def limits(self, settings: Settings) -> TimeLimits:
        return TimeLimits.for_task(self.time_limit or settings.task_time_limit_seconds, settings)

    def attempts(self, settings: Settings) -> int:
        return self.max_attempts or settings.task_max_attempts


REGISTRY: dict[str, TaskSpec] = {}


def task(
    kind: str,
    *,
    time_limit: float | None = None,
    max_attempts: int | None = None,
    detach_owner_on_success: bool = False,
) -> Callable[[TaskFunction], TaskFunction]:
    """Register ``async def f(ctx) -> result`` as the task of ``kind`` ("<domain>.<name>")."""

    def register(function: TaskFunction) -> TaskFunction:
        if "." not in kind:
            raise ValueError(f"task kind {kind!r} must be '<domain>.<name>'")
        if kind in REGISTRY and REGISTRY[kind].function is not function:
            raise ValueError(f"task kind {kind!r} is registered twice")
        REGISTRY[kind] = TaskSpec(kind, function, time_limit, max_attempts, detach_owner_on_success)
        return function

    return register


class TaskLogFilter(logging.Filter):
    """Prefixes every record logged while a task runs with ``[task_id]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        task_id = task_id_var.get()
        if task_id is not None:
            record.task_id = task_id
            prefix = f"[{task_id}] "
            if isinstance(record.msg, str) and not record.msg.startswith(prefix):
                record.msg = prefix + record.msg
        return True


@dataclass
class TaskContext:
    """What a running task knows about itself, and how it reports back."""

    task_id: str
    kind: str
    user_id: str | None
    params: dict[str, Any]
    attempt: int
    runtime: "ChildRuntime" = field(repr=False)
    log: logging.Logger = field(default=log, repr=False)

    async def progress(self, percent: int, *, cancellable: bool = True) -> None:
        """Record progress (0-100); raises TaskCancelled if the owner cancelled the task.

        A task that must not stop half-way once started passes ``cancellable=False``.
        """
        value = max(0, min(100, int(percent)))
        async with get_db_context() as session:
            cancel = await session.scalar(
                update(Task)
                .where(Task.id == self.task_id, Task.status == RUNNING)
                .values(progress=value)
                .returning(Task.cancel_requested)
            )
        if cancel is None or (cancel and cancellable):
            raise TaskCancelled

    async def checkpoint(self) -> None:
        """Raise TaskCancelled if the owner cancelled the task (or it was purged); else return."""
        async with get_db_context() as session:
            cancel = await session.scalar(
                select(Task.cancel_requested).where(Task.id == self.task_id)
            )
        if cancel is None or cancel:
            raise TaskCancelled

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def channel(self, service: str) -> grpc.aio.Channel:
        """A channel to another Folio service, authenticated as this task's domain."""
        return self.runtime.channel(service, caller=self.kind.split(".", 1)[0])


def is_transient(error: BaseException) -> bool:
    """Whether another attempt could succeed: peers down, timeouts, lost connections."""
    if isinstance(error, TransientError | Unavailable | ConnectionError):
        return True
    if isinstance(error, grpc.aio.AioRpcError | grpc.RpcError):
        code = error.code() if callable(getattr(error, "code", None)) else None
        return code in TRANSIENT_GRPC_CODES
    if isinstance(error, sa_exc.DBAPIError):
        return bool(error.connection_invalidated) or isinstance(error, sa_exc.OperationalError)
    return isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError)


def envelope(value: Any) -> dict[str, Any]:
    """The stored result: the task's own {"success": ...} dict, or its value wrapped in one."""
    if (
        isinstance(value, Mapping)
        and isinstance(value.get("success"), bool)
        and set(value) <= _ENVELOPE_KEYS
    ):
        return dict(value)
    return {"success": True, "result": value}


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        text_ = f"{error.code().name}: {error.details()}"
    else:
        text_ = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text_[:_MAX_ERROR_CHARS]


def retry_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half of the step fixed, half random."""
    step = min(cap, base * 2.0 ** max(0, attempt - 1))
    return step / 2 + random.uniform(0, step / 2)


def lock_key(task_id: str) -> int:
    """The task's signed 64-bit advisory lock key."""
    digest = hashlib.sha256(f"folio.task:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class ChildRuntime:
    """Per prefork child: an event loop, the tasks database and gRPC channels."""

    def __init__(self, settings: Settings) -> None:
        if not settings.database_url:
            raise RuntimeError("FOLIO_DATABASE_URL is required to run tasks")
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.database = Database(settings.database_url, pool_size=3)
        configure_default_database(self.database)
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._internal_key: str | None = None

    def channel(self, service: str, *, caller: str) -> grpc.aio.Channel:
        channel = self._channels.get((service, caller))
        if channel is None:
            if self._internal_key is None:
                self._internal_key = load_secrets(self.settings).internal_token_key
            channel = service_channel(
                service,
                caller=caller,
                settings=self.settings,
                internal_token_key=self._internal_key,
            )
            self._channels[(service, caller)] = channel
        return channel

    def run(self, spec: TaskSpec, task_id: str) -> str:
        """Run one delivery of ``task_id`` to the end; returns what became of it."""
        return self.loop.run_until_complete(execute(spec, task_id, self))

    def close(self) -> None:
        async def close_all() -> None:
            for channel in self._channels.values():
                await channel.close(None)
            await self.database.dispose()

        try:
            self.loop.run_until_complete(close_all())
        finally:
            self.loop.close()


async def execute(spec: TaskSpec, task_id: str, runtime: ChildRuntime) -> str:
    """One delivery: lock, claim, run, record. Returns the status it left (or "skipped").

    One connection carries the whole delivery: the claim commits together with taking
    the task's session-level advisory lock, and the result together with releasing it.
    A connection that could not release the lock is discarded, never pooled.
    """
    token = task_id_var.set(task_id)
    try:
        async with runtime.database.engine.connect() as conn:
            released = False
            try:
                claimed = await _claim(conn, spec, task_id, runtime)
                if isinstance(claimed, str):
                    released = True  # no lock taken, or already released with the decision
                    return claimed
                status = await _run(conn, spec, claimed, runtime.settings)
                released = True
                return status
            finally:
                if not released:
                    await conn.invalidate()
    finally:
        task_id_var.reset(token)


async def _claim(
    conn: AsyncConnection, spec: TaskSpec, task_id: str, runtime: ChildRuntime
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
        outcome = await _refuse(conn, task_id)
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


async def _refuse(conn: AsyncConnection, task_id: str) -> str:
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
        await _record(conn, task_id, CANCELLED, {"success": False, "error": "cancelled"})
        return CANCELLED
    error = f"gave up after {row.attempts} attempts" + (
        f"; last error: {row.error}" if row.error else ""
    )
    await _record(conn, task_id, FAILED, {"success": False, "error": error})
    return FAILED


async def _run(
    conn: AsyncConnection, spec: TaskSpec, context: TaskContext, settings: Settings
) -> str:
    """Run the task under its time limit and record the outcome, releasing the lock."""
    log.info("running %s (attempt %d of %d)", spec.kind, context.attempt, spec.attempts(settings))
    limits = spec.limits(settings)
    timeout = asyncio.timeout(limits.task)
    retry_in: float | None = None
    cancelled = False
    try:
        async with timeout:
            value = await spec.function(context)
        outcome = envelope(value)
        try:
            json.dumps(outcome)
        except (TypeError, ValueError) as error:
            outcome = {"success": False, "error": f"the task's result is not JSON: {error}"}
    except TaskCancelled:
        cancelled = True
        outcome = {"success": False, "error": "cancelled"}
    except Exception as error:  # the task's own failure, recorded as its result
        if isinstance(error, TimeoutError) and timeout.expired():
            outcome = {"success": False, "error": f"time limit of {limits.task:g} s exceeded"}
        elif is_transient(error) and context.attempt < spec.attempts(settings):
            retry_in = retry_delay(
                context.attempt,
                settings.task_retry_backoff_seconds,
                settings.task_retry_backoff_max_seconds,
            )
            outcome = {"success": False, "error": f"attempt {context.attempt}: {describe(error)}"}
            log.warning(
                "attempt %d failed with a transient error, retrying in %.1f s: %s",
                context.attempt,
                retry_in,
                describe(error),
            )
        else:
            outcome = {"success": False, "error": describe(error)}
            log.error("failed: %s", outcome["error"], exc_info=error)
    if retry_in is not None:
        status = await _schedule_retry(conn, spec, context.task_id, outcome["error"], retry_in)
    elif cancelled:
        status = await _record(conn, context.task_id, CANCELLED, outcome)
    else:
        status = await _record(
            conn,
            context.task_id,
            COMPLETED if outcome["success"] else FAILED,
            outcome,
            detach_owner=spec.detach_owner_on_success and bool(outcome["success"]),
        )
    await conn.execute(select(func.pg_advisory_unlock(lock_key(context.task_id))))
    await conn.commit()
    return status


async def _schedule_retry(
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


async def _record(
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


# --------------------------------------------------------------------------- main process


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
            conn.execute(
                "UPDATE tasks.tasks SET status = %s, error = %s, result = %s,"
                " finished_at = now(), updated_at = now() WHERE id = %s",
                (FAILED, error, json.dumps({"success": False, "error": error}), task_id),
            )
            log.error("%sfailed: %s", prefix, error)
    except psycopg.Error:
        log.exception("%scannot record the lost attempt (%s)", prefix, reason)


def fail_unknown_kind(settings: Settings, message: Any, kind: str) -> None:
    """Fail a task no worker of this deployment can run, rather than leave it pending."""
    try:
        task_id = _task_id_of(message.decode()[0])
    except (TypeError, ValueError, IndexError, KeyError):
        task_id = None
    if task_id is None or not settings.database_url:
        return
    error = f"no worker knows task kind {kind!r}"
    try:
        with psycopg.connect(libpq_url(settings.database_url)) as conn:
            conn.execute(
                "UPDATE tasks.tasks SET status = %s, error = %s, result = %s,"
                " finished_at = now(), updated_at = now()"
                " WHERE id = %s AND status IN (%s, %s)",
                (
                    FAILED,
                    error,
                    json.dumps({"success": False, "error": error}),
                    task_id,
                    PENDING,
                    RUNNING,
                ),
            )
    except psycopg.Error:
        log.exception("[%s] cannot record the unknown task kind %s", task_id, kind)
        return
    log.error("[%s] failed: %s", task_id, error)


_worker_settings: Settings | None = None


def configure_worker_settings(settings: Settings) -> None:
    """The settings the worker's main process records lost attempts with."""
    global _worker_settings
    _worker_settings = settings


def _task_id_of(args: Any) -> str | None:
    if isinstance(args, list | tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


class FolioRequest(Request):  # type: ignore[misc]
    """Records a killed child's attempt before Celery requeues its message."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        error = getattr(exc_info.exception, "exc", exc_info.exception)
        lost = isinstance(error, WorkerLostError) or (
            isinstance(error, SystemExit | KeyboardInterrupt)
            and not (self._already_cancelled or self._already_revoked)
        )
        task_id = _task_id_of(self.args)
        if lost and task_id and _worker_settings is not None:
            record_lost_attempt(
                _worker_settings,
                task_id,
                "the worker process running it died",
                retry=True,
                via_outbox=False,
            )
        return super().on_failure(exc_info, send_failed_event, return_ok)


class FolioCeleryTask(CeleryTask):  # type: ignore[misc]
    """Base of every Folio task in Celery: late acks, requeue on a lost worker."""

    Request = "libs.tasks.runtime:FolioRequest"
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    typing = False

    def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Reached in the main process when the hard time limit killed the child.
        folio_id = _task_id_of(args)
        if isinstance(exc, TimeLimitExceeded) and folio_id and _worker_settings is not None:
            record_lost_attempt(
                _worker_settings,
                folio_id,
                f"hard time limit of {self.time_limit:g} s exceeded",
                retry=False,
                via_outbox=False,
            )

    def on_retry(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Reached in the main process when Celery stopped the task after losing the broker
        # connection; its message comes back only after the visibility timeout, so the
        # outbox sends it again as soon as the broker is back.
        folio_id = _task_id_of(args)
        if folio_id and _worker_settings is not None:
            record_lost_attempt(
                _worker_settings,
                folio_id,
                "stopped after the broker connection was lost",
                retry=True,
                via_outbox=True,
            )


_child: ChildRuntime | None = None


def init_child(settings: Settings) -> None:
    """Set up a prefork child's runtime (Celery's worker_process_init)."""
    global _child
    _child = ChildRuntime(settings)


def close_child() -> None:
    """Tear a child's runtime down (Celery's worker_process_shutdown)."""
    global _child
    if _child is not None:
        runtime, _child = _child, None
        runtime.close()


def _run_in_child(spec: TaskSpec, task_id: str) -> str:
    global _child
    if _child is None:
        if _worker_settings is None:
            raise RuntimeError("the worker runtime is not configured")
        init_child(_worker_settings)
    assert _child is not None
    try:
        return _child.run(spec, task_id)
    except SoftTimeLimitExceeded:
        # Celery's backstop fired outside the task's own code and broke the event loop
        # mid-step: record the failure without it, then start the runtime afresh.
        runtime, _child = _child, None
        record_lost_attempt(
            runtime.settings,
            task_id,
            "soft time limit exceeded",
            retry=False,
            via_outbox=False,
        )
        try:
            runtime.close()
        except Exception:  # a loop interrupted mid-step may not close cleanly
            log.warning("[%s] could not close the interrupted runtime", task_id, exc_info=True)
        return FAILED
    except (sa_exc.DBAPIError, psycopg.Error, OSError) as error:
        # The tasks database is out of reach, so nothing can be claimed or recorded: put
        # the message back (after a pause, not in a tight loop) rather than ack it and
        # leave the task pending or running with no message to finish it.
        log.warning(
            "[%s] cannot reach the tasks database, requeueing the message: %s",
            task_id,
            describe(error),
        )
        time.sleep(DATABASE_RETRY_PAUSE_SECONDS)
        raise Reject(error, requeue=True) from error


def bind_tasks(app: Celery, settings: Settings) -> None:
    """Register every task in REGISTRY with the Celery app, with its time limits."""
    visibility = float(settings.broker_visibility_timeout_seconds)
    for spec in REGISTRY.values():
        limits = spec.limits(settings)
        limits.check(visibility)
        _bind(app, spec, limits)


def _bind(app: Celery, spec: TaskSpec, limits: TimeLimits) -> None:
    def run(task_id: str) -> str:
        return _run_in_child(spec, task_id)

    app.task(
        name=spec.kind,
        base=FolioCeleryTask,
        soft_time_limit=limits.soft,
        time_limit=limits.hard,
    )(run)
