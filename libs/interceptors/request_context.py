"""The request id of a call (taken or made) and its JSON access-log line."""

import logging
import re
import time
from typing import Any

import grpc

from libs.ids import new_id

REQUEST_ID_KEY = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("folio.access")


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    """The first value of ``key`` in the call's metadata."""
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else None
    return None


def request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's request id when it is well formed, else a new one."""
    given = metadata_value(context, REQUEST_ID_KEY)
    return given if given and _VALID_REQUEST_ID.fullmatch(given) else new_id()


def log_rpc(method: str, code: object, started: float, peer: str) -> None:
    """The access-log line of one RPC."""
    access_log.info(
        "rpc",
        extra={
            "method": method,
            "code": code.name if isinstance(code, grpc.StatusCode) else str(code),
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "peer": peer,
        },
    )
