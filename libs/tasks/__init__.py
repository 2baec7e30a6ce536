"""Folio's task runtime: the Celery app, task registration, the worker runtime, the outbox."""

from libs.tasks.author import TaskCancelled, TaskContext, TransientError, task
from libs.tasks.models import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_STATUSES,
    PENDING,
    RUNNING,
    STATUSES,
)

# The account-deletion task: the task service keeps it (as an anonymous receipt) when it
# purges the user's other tasks.
ACCOUNT_DELETION_KIND = "user.delete"

__all__ = [
    "ACCOUNT_DELETION_KIND",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "FINAL_STATUSES",
    "PENDING",
    "RUNNING",
    "STATUSES",
    "TaskCancelled",
    "TaskContext",
    "TransientError",
    "task",
]
