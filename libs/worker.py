"""``folio worker``: the prefork Celery pool that runs every domain's tasks.

It imports each domain's tasks module (the ``folio.tasks`` entry points, and
``FOLIO_WORKER_IMPORTS``), binds the registered tasks to Folio's Celery app, and gives
every child process its own event loop, database engine and gRPC channels (none of which
may cross a fork).
"""

import importlib
import logging
import os
from importlib.metadata import entry_points
from typing import Any

import redis
from celery import Celery
from celery.signals import task_unknown, worker_process_init, worker_process_shutdown

from libs.config import Settings
from libs.logs import configure_logging
from libs.tasks.app import QUEUE, create_celery_app
from libs.tasks.runtime import (
    REGISTRY,
    TaskLogFilter,
    bind_tasks,
    close_child,
    configure_worker_settings,
    fail_unknown_kind,
    init_child,
)

log = logging.getLogger(__name__)
TASKS_GROUP = "folio.tasks"


def task_modules(settings: Settings) -> list[str]:
    """Every domain's tasks module (``folio.tasks`` entry points), then the settings' extras."""
    found = sorted(entry.value for entry in entry_points(group=TASKS_GROUP))
    return [*found, *settings.worker_imports]


def build_worker_app(settings: Settings) -> Celery:
    """Folio's Celery app with every task of this checkout bound to it."""
    for module in task_modules(settings):
        importlib.import_module(module)
    app = create_celery_app(settings)
    bind_tasks(app, settings)
    return app


def _warn_if_redis_evicts(settings: Settings) -> None:
    """Checklist item 8: an evicting Redis silently drops queued messages."""
    assert settings.redis_url
    try:
        with redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2) as client:
            policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:
        return
    if policy not in (None, "noeviction"):
        log.warning("Redis maxmemory-policy is %s; set noeviction so tasks are not lost", policy)


def _survive_broker_loss_with_unacked_messages() -> None:
    """Keep the worker alive when Redis goes away while a late-acked task runs.

    Celery 5.7 collects the broken connection (which drops the transport's client) and
    then closes it; closing tries to push unacked messages back to Redis through that
    client and dies with AttributeError, which Celery treats as unrecoverable. The
    messages stay in Redis's unacked set and come back after the visibility timeout; the
    runtime requeues the interrupted tasks through the outbox well before that.
    """
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.QoS.restore_unacked
    if getattr(original, "folio_patched", False):
        return

    def restore_unacked(self: Any, client: Any = None) -> Any:
        if client is None and self.channel.connection.client is None:
            log.warning(
                "broker connection lost with %d unacked message(s); Redis keeps them",
                len(self._delivered),
            )
            return None
        return original(self, client)  # type: ignore[no-untyped-call]

    restore_unacked.folio_patched = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]


def _init_child(**_: object) -> None:
    assert _settings is not None
    init_child(_settings)


def _close_child(**_: object) -> None:
    close_child()


def _unknown_task(message: object, name: str, **_: object) -> None:
    assert _settings is not None
    fail_unknown_kind(_settings, message, name)


_settings: Settings | None = None


def run_worker(settings: Settings, *, concurrency: int | None = None) -> int:
    """Run the worker pool until SIGTERM (warm shutdown) or SIGINT."""
    global _settings
    configure_logging("worker", settings.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(TaskLogFilter())
    if not settings.database_url or not settings.redis_url:
        log.error("FOLIO_DATABASE_URL and FOLIO_REDIS_URL are required")
        return 2
    _settings = settings
    configure_worker_settings(settings)
    app = build_worker_app(settings)
    _survive_broker_loss_with_unacked_messages()
    _warn_if_redis_evicts(settings)
    worker_process_init.connect(_init_child, weak=False)
    worker_process_shutdown.connect(_close_child, weak=False)
    task_unknown.connect(_unknown_task, weak=False)
    processes = concurrency or settings.worker_concurrency
    log.info("worker starting with %d processes for %s", processes, ", ".join(sorted(REGISTRY)))
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={processes}",
            f"--queues={QUEUE}",
            f"--hostname=folio-{os.getpid()}@%h",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0
