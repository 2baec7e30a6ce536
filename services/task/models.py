"""The ``tasks`` schema, shared with the worker runtime (see libs.tasks.models)."""

from libs.tasks.models import SCHEMA, Base, Outbox, Task

__all__ = ["SCHEMA", "Base", "Outbox", "Task"]
