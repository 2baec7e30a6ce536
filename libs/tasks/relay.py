"""The outbox relay: publishes committed task messages to the broker, at least once.

It runs inside the task service. Each pass takes a batch of due outbox rows with
``FOR UPDATE SKIP LOCKED``, publishes them and deletes them in the same transaction, so
several task-service replicas can relay side by side without sending a row twice at
once. A publish that fails (broker down) rolls the pass back: the rows stay and are
retried with backoff, so an outage delays tasks but loses none. A crash after publishing
and before the commit sends a row again; the worker runtime ignores the duplicate.
"""

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import delete, func, select

from libs.db import Database
from libs.ids import new_id
from libs.tasks.app import QUEUE
from libs.tasks.models import Outbox

log = logging.getLogger(__name__)

BATCH_SIZE = 100
_MIN_BACKOFF = 0.1
_MAX_BACKOFF = 5.0
_WARN_INTERVAL = 30.0
_LOCKED_RETRY_SECONDS = 0.05


@dataclass(frozen=True)
class Message:
    outbox_id: int
    task_id: str
    kind: str


class OutboxRelay:
    """Moves outbox rows to the broker; ``wake()`` it when rows are committed."""

    def __init__(
        self,
        database: Database,
        app: Celery,
        *,
        poll_seconds: float = 1.0,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.database = database
        self.app = app
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self._wakeup = asyncio.Event()
        # kombu is synchronous: publish from one thread, in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-relay")
        self._last_warning = 0.0
        self.published = 0

    def wake(self, _payload: str | None = None) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        """Relay until cancelled."""
        backoff = _MIN_BACKOFF
        try:
            while True:
                self._wakeup.clear()
                try:
                    sent = await self.relay_once()
                    idle = 0.0 if sent >= self.batch_size else await self._idle_seconds()
                    if sent == 0 and idle <= 0:
                        # Due rows another replica holds: look again shortly, don't spin.
                        idle = _LOCKED_RETRY_SECONDS
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # broker or database down: keep the rows, retry
                    self._warn(error)
                    await asyncio.sleep(backoff)
                    backoff = min(_MAX_BACKOFF, backoff * 2)
                    continue
                if backoff > _MIN_BACKOFF:
                    log.info("outbox relay publishing again")
                backoff = _MIN_BACKOFF
                if idle <= 0:
                    continue
                try:
                    await asyncio.wait_for(self._wakeup.wait(), idle)
                except TimeoutError:
                    pass
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def relay_once(self) -> int:
        """Publish one batch of due rows; returns how many were published."""
        async with self.database.session() as session:
            rows = (
                await session.execute(
                    select(Outbox.id, Outbox.task_id, Outbox.kind)
                    .where(Outbox.available_at <= func.now())
                    .order_by(Outbox.available_at, Outbox.id)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            messages = [Message(row.id, row.task_id, row.kind) for row in rows]
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._publish, messages)
            await session.execute(
                delete(Outbox).where(Outbox.id.in_([m.outbox_id for m in messages]))
            )
        self.published += len(messages)
        return len(messages)

    def _publish(self, messages: Sequence[Message]) -> None:
        with self.app.producer_or_acquire() as producer:
            for message in messages:
                self.app.send_task(
                    message.kind,
                    args=[message.task_id],
                    task_id=new_id(),
                    # The default exchange puts the message straight on the queue's list:
                    # no exchange binding to lose if Redis restarts empty.
                    exchange="",
                    routing_key=QUEUE,
                    producer=producer,
                )

    async def _idle_seconds(self) -> float:
        """How long to sleep: until the next delayed row is due, at most poll_seconds."""
        async with self.database.session() as session:
            due_in = await session.scalar(
                select(func.extract("epoch", func.min(Outbox.available_at) - func.now()))
            )
        if due_in is None:
            return self.poll_seconds
        return max(0.0, min(self.poll_seconds, float(due_in)))

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            log.warning(
                "outbox relay cannot publish, will retry: %s: %s", type(error).__name__, error
            )
