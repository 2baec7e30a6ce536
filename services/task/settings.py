"""The task service's own settings, on top of those every Folio process shares."""

from typing import Self

from pydantic import model_validator

from libs.config import Settings


class TaskSettings(Settings):
    """What the task service reads from its environment, validated when it starts."""

    # How often the outbox relay looks for due messages when no notification wakes it.
    task_relay_poll_seconds: float = 1.0

    @model_validator(mode="after")
    def _has_a_broker(self) -> Self:
        if not self.redis_url:
            raise ValueError("FOLIO_REDIS_URL is required (the task broker)")
        return self
