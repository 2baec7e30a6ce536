"""The worker runtime: runs Folio tasks in Celery's prefork children and records every attempt.

A message carries only a task id. Each delivery takes a per-task advisory lock (so two
deliveries never run one task at once), claims the row (pending, or running after a lost
attempt), runs the task under its time limit, and writes the final status with the
``{"success": ..., "result" | "error": ...}`` dict. Transient faults are retried through
the outbox with backoff and jitter, a bounded number of times. Whatever ends an attempt
outside the task (a killed child, a hard time limit, a broker connection loss) is
recorded by the worker's main process, so no task stays ``running`` once the worker has
given up on it. The author API is in ``libs.tasks.author``, the row's state machine in
``libs.tasks.state``; this module is the Celery glue around them.
"""

import asyncio
import json
import logging
import time
from typing import Any

import grpc
import psycopg
from billiard.exceptions import WorkerLostError  # type: ignore[import-untyped]
from celery import Celery
from celery import Task as CeleryTask
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker.request import Request
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.config import Settings
from libs.db import Database, configure_default_database
from libs.grpc_client import service_channel
from libs.secrets import load_secrets
from libs.tasks.app import TimeLimits
from libs.tasks.author import (
    REGISTRY,
    TaskCancelled,
    TaskContext,
    TaskLogFilter,
    TaskSpec,
    task_id_var,
)
from libs.tasks.models import CANCELLED, COMPLETED, FAILED
from libs.tasks.outcome import describe, envelope, is_transient, retry_delay
from libs.tasks.state import (
    claim,
    fail_unknown_kind,
    record,
    record_lost_attempt,
    release,
    schedule_retry,
    task_id_of,
)

log = logging.getLogger("folio.tasks")

# How long a worker process pauses before giving a message back when the database is down.
DATABASE_RETRY_PAUSE_SECONDS = 2.0

__all__ = ["REGISTRY", "TaskLogFilter", "fail_unknown_kind", "task_id_var"]


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
                claimed = await claim(conn, spec, task_id, runtime)
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
        status = await schedule_retry(conn, spec, context.task_id, outcome["error"], retry_in)
    elif cancelled:
        status = await record(conn, context.task_id, CANCELLED, outcome)
    else:
        status = await record(
            conn,
            context.task_id,
            COMPLETED if outcome["success"] else FAILED,
            outcome,
            detach_owner=spec.detach_owner_on_success and bool(outcome["success"]),
        )
    await release(conn, context.task_id)
    return status


_worker_settings: Settings | None = None


def configure_worker_settings(settings: Settings) -> None:
    """The settings the worker's main process records lost attempts with."""
    global _worker_settings
    _worker_settings = settings


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
        task_id = task_id_of(self.args)
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
        folio_id = task_id_of(args)
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
        folio_id = task_id_of(args)
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
