"""The one Celery app of Folio's worker pool, configured for tasks that must not be lost.

Celery is only the transport: a message carries a task id, and the ``tasks`` table says
what the task is and what became of it. The settings close Celery's known ways to lose or
repeat work: late acks with reject-on-worker-lost, prefetch 1, time limits below the
visibility timeout, bounded retries for transient faults only.
"""

from dataclasses import dataclass
from typing import Any

from celery import Celery

from libs.config import Settings
from libs.urls import celery_broker_url

QUEUE = "folio"


@dataclass(frozen=True)
class TimeLimits:
    """A task's limits, each shorter than the next (checklist items 2 and 3)."""

    task: float
    soft: float
    hard: float

    @classmethod
    def for_task(cls, seconds: float, settings: Settings) -> "TimeLimits":
        """Limits for a task of ``seconds``: Celery's soft, then hard (kill) limit behind it."""
        return cls(
            task=seconds,
            soft=seconds + settings.task_soft_limit_margin_seconds,
            hard=seconds + settings.task_hard_limit_margin_seconds,
        )

    def check(self, visibility_timeout: float) -> None:
        """Refuse limits a redelivery could overtake: task < soft < hard < visibility timeout."""
        if not 0 < self.task < self.soft < self.hard < visibility_timeout:
            raise ValueError(
                f"time limits must satisfy 0 < task ({self.task}) < soft ({self.soft}) < "
                f"hard ({self.hard}) < broker visibility timeout ({visibility_timeout})"
            )


def broker_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise ValueError("FOLIO_REDIS_URL is required for the task broker")
    return celery_broker_url(settings.redis_url)


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings of every Folio process that publishes or runs tasks."""
    visibility = settings.broker_visibility_timeout_seconds
    limits = TimeLimits.for_task(settings.task_time_limit_seconds, settings)
    limits.check(visibility)
    transport = {
        # Item 2: a message not acked within this is redelivered; every time limit is
        # below it. The same value for results and the broker: the shortest one wins.
        "visibility_timeout": visibility,
        # Fail fast when Redis is down: the outbox keeps the message and retries.
        "socket_connect_timeout": 5,
    }
    return {
        "broker_url": broker_url(settings),
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        # Item 9: the tasks table is the state; no result backend to disagree with it.
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "task_create_missing_queues": True,
        # Item 1: ack after the attempt is recorded, and give the message back when the
        # child dies (SIGKILL, OOM); attempts are bounded in the runtime (no loops).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Item 3: every task has limits; the runtime's own is set per task.
        "task_soft_time_limit": limits.soft,
        "task_time_limit": limits.hard,
        # Item 4: one message per free process, none held for later.
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        # Item 7: after a broker connection loss, stop late-acked tasks rather than let
        # them run again in parallel; the runtime requeues them through the outbox.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Item 8: on shutdown give running tasks a moment, then requeue what is unacked.
        "worker_soft_shutdown_timeout": 10.0,
        "worker_enable_soft_shutdown_on_idle": True,
        # Folio's JSON logging stays in charge of the root logger.
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        # Publishing from the outbox relay: give up fast, the relay retries with backoff.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def create_celery_app(settings: Settings, name: str = "folio") -> Celery:
    """Folio's Celery app for these settings."""
    app = Celery(name, set_as_current=False)
    app.config_from_object(celery_config(settings))
    return app
