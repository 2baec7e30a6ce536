"""One database session per RPC: committed when it succeeds, rolled back when it fails."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from libs.db import Database, db_session_var
from libs.interceptors.base import AroundInterceptor, bound


class DbSessionInterceptor(AroundInterceptor):
    """The gRPC form of ``Depends(get_db)``: handlers read it with ``current_session()``."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @asynccontextmanager
    async def around(
        self, context: grpc.aio.ServicerContext[Any, Any], method_name: str
    ) -> AsyncIterator[None]:
        async with self.database.session() as session:
            with bound(db_session_var, session):
                yield
