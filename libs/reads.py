"""Hot reads: one prepared statement on an autocommit connection, without the ORM.

A read-only RPC on a hot path (GetMe, the role lookups behind every PREMIUM/ADMIN
check) needs one row by primary key. Through the per-RPC session that costs a
transaction (BEGIN, SELECT, COMMIT) and the ORM's identity map; here it is one round
trip of a statement each connection prepares once. Everything that writes, or reads
more than one statement's worth, uses the session.
"""

import logging
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from libs.urls import libpq_url

log = logging.getLogger(__name__)

# Hot reads are short: a few connections serve thousands of them a second.
READ_POOL_SIZE = 4
# How long a read waits for a connection before it fails (database down or saturated).
READ_POOL_TIMEOUT = 3.0


class ReadPool:
    """A small pool of autocommit connections that prepare every statement they run."""

    def __init__(self, url: str, *, max_size: int = READ_POOL_SIZE) -> None:
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = AsyncConnectionPool(
            libpq_url(url),
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            timeout=READ_POOL_TIMEOUT,
            name="folio-reads",
        )
        self._opened = False

    async def fetch_one(self, query: str, params: tuple[Any, ...]) -> TupleRow | None:
        """The first row of ``query``, or None.

        A connection the server closed since it was pooled (a restart) fails once; the
        pool discards it and the read is tried once more on a fresh connection.
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
                log.info("a pooled read connection was closed; retrying on a fresh one")
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
