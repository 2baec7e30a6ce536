"""PostgreSQL LISTEN/NOTIFY for the task service: outbox wake-ups and task changes."""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import psycopg

log = logging.getLogger(__name__)

OUTBOX_CHANNEL = "folio_task_outbox"
TASK_CHANGED_CHANNEL = "folio_task_changed"
_MAX_BACKOFF = 5.0

Callback = Callable[[str | None], None]


class Listener:
    """One LISTEN connection; a payload of None tells subscribers notifications may be lost."""

    def __init__(self, dsn: str, channels: list[str]) -> None:
        self.dsn = dsn
        self.channels = channels
        self.ready = asyncio.Event()
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)

    def subscribe(self, channel: str, callback: Callback) -> None:
        self._callbacks[channel].append(callback)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                    for channel in self.channels:
                        await conn.execute(f'LISTEN "{channel}"')
                    backoff = 0.1
                    self.ready.set()
                    # Anything sent while we were not listening is unknown: say so.
                    self._dispatch_all(None)
                    async for notify in conn.notifies():
                        for callback in self._callbacks.get(notify.channel, ()):
                            callback(notify.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as error:
                self.ready.clear()
                log.warning("task listener lost its connection, reconnecting: %s", error)
                self._dispatch_all(None)
                await asyncio.sleep(backoff)
                backoff = min(_MAX_BACKOFF, backoff * 2)

    def _dispatch_all(self, payload: str | None) -> None:
        for callbacks in self._callbacks.values():
            for callback in callbacks:
                callback(payload)


class TaskWatchers:
    """Long-poll waiters by task id, woken by task-change notifications."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, task_id: str | None) -> None:
        if task_id is None:
            for events in self._waiters.values():
                for event in events:
                    event.set()
            return
        for event in self._waiters.get(task_id, ()):
            event.set()

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``task_id`` may have changed, while the block runs."""
        event = asyncio.Event()
        self._waiters[task_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[task_id]
