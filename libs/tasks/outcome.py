"""What an attempt's end means: transient or final, the stored result, the next retry."""

import random
from collections.abc import Mapping
from typing import Any

import grpc
import redis.exceptions
from sqlalchemy import exc as sa_exc

from libs.errors import Unavailable
from libs.tasks.author import TransientError

TRANSIENT_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
# What a task may say about itself in the {"success": ..., ...} dict.
_ENVELOPE_KEYS = frozenset({"success", "result", "error"})
_MAX_ERROR_CHARS = 2000


def is_transient(error: BaseException) -> bool:
    """Whether another attempt could succeed: peers down, timeouts, lost connections."""
    if isinstance(error, TransientError | Unavailable | ConnectionError):
        return True
    if isinstance(error, grpc.aio.AioRpcError | grpc.RpcError):
        code = error.code() if callable(getattr(error, "code", None)) else None
        return code in TRANSIENT_GRPC_CODES
    if isinstance(error, sa_exc.DBAPIError):
        return bool(error.connection_invalidated) or isinstance(error, sa_exc.OperationalError)
    return isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError)


def envelope(value: Any) -> dict[str, Any]:
    """The stored result: the task's own {"success": ...} dict, or its value wrapped in one."""
    if (
        isinstance(value, Mapping)
        and isinstance(value.get("success"), bool)
        and set(value) <= _ENVELOPE_KEYS
    ):
        return dict(value)
    return {"success": True, "result": value}


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        text_ = f"{error.code().name}: {error.details()}"
    else:
        text_ = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text_[:_MAX_ERROR_CHARS]


def retry_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half of the step fixed, half random."""
    step = min(cap, base * 2.0 ** max(0, attempt - 1))
    return step / 2 + random.uniform(0, step / 2)
