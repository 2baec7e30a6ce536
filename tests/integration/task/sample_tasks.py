"""Tasks the task tests run in a real worker (imported through FOLIO_WORKER_IMPORTS).

Each writes what it did under ``params["dir"]`` so a test can see every run, including
runs that were killed half-way.
"""

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from libs.tasks import TaskContext, TransientError, task


def _dir(ctx: TaskContext) -> Path:
    return Path(ctx.params["dir"])


def _record_run(ctx: TaskContext) -> None:
    with (_dir(ctx) / f"runs-{ctx.task_id}").open("a") as runs:
        runs.write(f"{ctx.attempt} {os.getpid()}\n")


@task("test.echo")
async def echo(ctx: TaskContext) -> Any:
    """Returns its params."""
    if "dir" in ctx.params:
        _record_run(ctx)
    return ctx.params.get("value")


@task("test.fail")
async def fail(ctx: TaskContext) -> Any:
    """Raises the error its params name."""
    raise ValueError(ctx.params.get("message", "boom"))


@task("test.failure_dict")
async def failure_dict(_ctx: TaskContext) -> dict[str, Any]:
    """Reports failure the original backend's way: by returning it."""
    return {"success": False, "error": "no such document"}


@task("test.flaky", max_attempts=3)
async def flaky(ctx: TaskContext) -> Any:
    """Fails with a transient error until its ``ok_on_attempt``."""
    _record_run(ctx)
    if ctx.attempt < int(ctx.params["ok_on_attempt"]):
        raise TransientError(f"peer unavailable on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@task("test.gated")
async def gated(ctx: TaskContext) -> Any:
    """Applies its effect once, then waits for the gate file, checking for cancellation."""
    _record_run(ctx)
    effect = _dir(ctx) / f"effect-{ctx.task_id}"
    # Keyed on the task id: a redelivered run finds the effect done and does not redo it.
    try:
        descriptor = os.open(effect, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pass
    else:
        os.write(descriptor, b"applied\n")
        os.close(descriptor)
    await ctx.progress(50)
    gate = _dir(ctx) / f"gate-{ctx.task_id}"
    while not gate.exists():
        await ctx.checkpoint()
        await asyncio.sleep(0.02)
    return {"effects": len(list(_dir(ctx).glob(f"effect-{ctx.task_id}")))}


@task("test.slow", time_limit=1.0)
async def slow(_ctx: TaskContext) -> Any:
    """Outlives its one-second time limit."""
    await asyncio.sleep(30)
    return "unreachable"


@task("test.blocking", time_limit=0.5)
async def blocking(_ctx: TaskContext) -> Any:
    """Blocks its event loop, so only Celery's soft limit can stop it."""
    time.sleep(30)  # noqa: ASYNC251 - a task stuck in blocking code is the point
    return "unreachable"


@task("test.stubborn", time_limit=0.5)
async def stubborn(_ctx: TaskContext) -> Any:
    """Ignores the soft limit too, so only the hard limit (killing the process) stops it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            time.sleep(30)  # noqa: ASYNC251 - as above
        except SoftTimeLimitExceeded:
            continue
    return "unreachable"
