"""How a domain writes a task: ``@task(kind)`` on ``async def f(ctx)``, and its context.

``ctx`` reports progress, checks for cancellation between steps, and reaches other
services over gRPC as the task's domain. Task logs carry the ``[task_id]`` prefix.
"""

import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from sqlalchemy import select, update

from libs.config import Settings
from libs.db import get_db_context
from libs.tasks.app import TimeLimits
from libs.tasks.models import RUNNING, Task

if TYPE_CHECKING:
    from libs.tasks.runtime import ChildRuntime

log = logging.getLogger("folio.tasks")

task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)


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
