"""Takes or makes the request id, echoes it, and writes one JSON access-log line per RPC."""

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from libs.ids import new_id
from libs.interceptors.base import AroundInterceptor, bound
from libs.logs import request_id_var

REQUEST_ID_KEY = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("folio.access")


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    """The first value of ``key`` in the call's metadata."""
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else None
    return None


class RequestContextInterceptor(AroundInterceptor):
    """Outermost interceptor: request id in, request id out, one access-log line."""

    @asynccontextmanager
    async def around(
        self, context: grpc.aio.ServicerContext[Any, Any], method_name: str
    ) -> AsyncIterator[None]:
        given = metadata_value(context, REQUEST_ID_KEY)
        request_id = given if given and _VALID_REQUEST_ID.fullmatch(given) else new_id()
        # Read the peer now: grpc.aio crashes when peer() is called after a call was cancelled.
        peer = context.peer()
        started = time.perf_counter()
        code: object = grpc.StatusCode.OK
        with bound(request_id_var, request_id):
            try:
                await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                yield
            except (GeneratorExit, asyncio.CancelledError):
                # The client went away (a stream it stopped reading, a call it cancelled).
                code = context.code() or grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                access_log.info(
                    "rpc",
                    extra={
                        "method": method_name,
                        "code": code.name if isinstance(code, grpc.StatusCode) else str(code),
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "peer": peer,
                    },
                )
