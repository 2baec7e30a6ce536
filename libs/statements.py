"""Hot single statements: one prepared statement on an autocommit connection, no ORM.

A hot path that needs one statement (GetMe and the role lookups behind every
PREMIUM/ADMIN check read one row by primary key; an LLM call reserves its tokens in one
conditional upsert) pays, through the per-RPC session, for a transaction (BEGIN, the
statement, COMMIT) and the ORM's bookkeeping. Here it is one round trip of a statement
each connection prepares once; in autocommit a statement is its own transaction.
Everything else uses the session.
"""

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from libs.urls import libpq_url

log = logging.getLogger(__name__)

# Single statements are short: a few connections serve thousands of them a second.
POOL_SIZE = 4
# How long a statement waits for a connection before it fails (database down or saturated).
POOL_TIMEOUT = 3.0


class StatementPool:
    """A small pool of autocommit connections that prepare every statement they run."""

    def __init__(self, url: str, *, max_size: int = POOL_SIZE) -> None:
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = AsyncConnectionPool(
            libpq_url(url),
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            timeout=POOL_TIMEOUT,
            name="folio-statements",
        )
        self._opened = False

    async def fetch_one(
        self, query: str, params: tuple[Any, ...] | Mapping[str, Any]
    ) -> TupleRow | None:
        """The first row of ``query``, or None.

        A connection the server closed since it was pooled (a restart) fails before the
        statement reaches the server; the pool discards it and the statement is sent once
        more on a fresh connection.
        """
        if not self._opened:
            await self._pool.open(wait=False)
            self._opened = True
        for attempt in range(2):
            try:
                async with self._pool.connection() as connection:
                    cursor = await connection.execute(query, params)
                    return await cursor.fetchone()
            except PoolTimeout:
                raise
            except psycopg.OperationalError:
                if attempt:
                    raise
                log.info("a pooled connection was closed; retrying on a fresh one")
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
