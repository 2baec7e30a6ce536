"""Token budgets: a call reserves its worst case before it starts and settles after.

Reserving is one conditional UPDATE on the user's row for the period, so concurrent calls
can never set aside more than the budget; settling replaces the reservation by what the
call really used. Each step commits on its own connection, outside the RPC's transaction:
a reservation must be visible to other calls at once, and a settlement must survive a
call that was cancelled.
"""

import datetime as dt
import math
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import Database
from libs.errors import ResourceExhausted
from libs.ids import new_id
from libs.statements import StatementPool
from services.llm.providers import Call, Tokens

LOST_AFTER_SECONDS = 3600


def period_of(
    moment: dt.datetime, period: Literal["day", "month"]
) -> tuple[dt.datetime, dt.datetime]:
    """The budget period holding ``moment``: its start and when the next one starts."""
    moment = moment.astimezone(dt.UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(days=1)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (start + dt.timedelta(days=32)).replace(day=1)
    return start, following


@dataclass(frozen=True)
class Reservation:
    call_id: str
    user_id: str
    period_start: dt.datetime
    tokens: int


@dataclass(frozen=True)
class PeriodUsage:
    tokens: Tokens
    used: int
    period_start: dt.datetime
    resets_at: dt.datetime


_RESERVE = (
    "WITH reserved AS ("
    " INSERT INTO llm.budgets AS b (user_id, period_start, reserved_tokens)"
    " SELECT %(user)s, %(start)s, %(tokens)s WHERE %(tokens)s <= %(budget)s"
    " ON CONFLICT (user_id, period_start) DO UPDATE"
    " SET reserved_tokens = b.reserved_tokens + excluded.reserved_tokens"
    " WHERE b.used_tokens + b.reserved_tokens + excluded.reserved_tokens <= %(budget)s"
    " RETURNING 1"
    "), recorded AS ("
    " INSERT INTO llm.calls (id, user_id, operation, model, period_start, reserved_tokens)"
    " SELECT %(id)s, %(user)s, %(operation)s, %(model)s, %(start)s, %(tokens)s FROM reserved"
    " RETURNING 1"
    ") SELECT count(*) FROM recorded"
)


class Budgets:
    """Reserves, settles and reports tokens in the ``llm`` schema."""

    def __init__(
        self, database: Database, statements: StatementPool, period: Literal["day", "month"]
    ) -> None:
        self.database = database
        # Reserving sits before every call's first token: one statement, one round trip.
        self.statements = statements
        self.period = period

    async def reserve(
        self,
        user_id: str,
        *,
        budget: int,
        tokens: int,
        operation: str,
        model: str,
        now: dt.datetime | None = None,
    ) -> Reservation:
        """Set ``tokens`` aside for a call, or QUOTA_EXCEEDED until the period ends."""
        moment = now or dt.datetime.now(dt.UTC)
        start, resets_at = self.period_of(moment)
        call_id = new_id()
        # One statement, one round trip, its own transaction: the budget row is created or
        # raised only while the period's use stays within the budget, and the call is
        # recorded only if it was.
        row = await self.statements.fetch_one(
            _RESERVE,
            {
                "id": call_id,
                "user": user_id,
                "operation": operation,
                "model": model,
                "start": start,
                "tokens": tokens,
                "budget": budget,
            },
        )
        if row is None or not row[0]:
            retry_after = max(1, math.ceil((resets_at - moment).total_seconds()))
            raise ResourceExhausted(
                "the token budget of this period is spent",
                retry_after=retry_after,
                reason="QUOTA_EXCEEDED",
            )
        return Reservation(call_id, user_id, start, tokens)

    def period_of(self, moment: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        return period_of(moment, self.period)

    async def settle(
        self,
        reservation: Reservation,
        call: Call,
        *,
        model: str,
        outcome: str,
        latency_ms: int,
        error: str = "",
    ) -> None:
        """Replace the reservation by what the call used, and record the call."""
        tokens = call.tokens
        if outcome != "ok":
            # Cut short: the upstream may not have reported its output yet.
            tokens.output = max(tokens.output, call.deltas)
        async with self.database.session() as session:
            settled = await session.execute(
                text(
                    "UPDATE llm.calls SET input_tokens = :input, output_tokens = :output,"
                    " cache_read_tokens = :cache_read, cache_write_tokens = :cache_write,"
                    " upstream_request_id = :request_id, latency_ms = :latency,"
                    " outcome = :outcome, error = :error, model = :model, updated_at = now()"
                    " WHERE id = :id AND outcome = 'running'"
                ),
                {
                    "id": reservation.call_id,
                    "input": tokens.input,
                    "output": tokens.output,
                    "cache_read": tokens.cache_read,
                    "cache_write": tokens.cache_write,
                    "request_id": call.request_id,
                    "latency": latency_ms,
                    "outcome": outcome,
                    "error": error[:500],
                    "model": model,
                },
            )
            if not settled.rowcount:  # type: ignore[attr-defined]
                return  # already settled (or released as lost)
            await session.execute(
                text(
                    "UPDATE llm.budgets SET reserved_tokens = reserved_tokens - :reserved,"
                    " used_tokens = used_tokens + :used"
                    " WHERE user_id = :user AND period_start = :start"
                ),
                {
                    "reserved": reservation.tokens,
                    "used": tokens.total,
                    "user": reservation.user_id,
                    "start": reservation.period_start,
                },
            )

    async def release_lost(self, older_than_seconds: int = LOST_AFTER_SECONDS) -> int:
        """Give back what calls that never settled (their process died) still hold."""
        async with self.database.session() as session:
            lost = (
                await session.execute(
                    text(
                        "UPDATE llm.calls SET outcome = 'lost', updated_at = now()"
                        " WHERE outcome = 'running'"
                        " AND created_at < now() - make_interval(secs => :age)"
                        " RETURNING user_id, period_start, reserved_tokens"
                    ),
                    {"age": older_than_seconds},
                )
            ).all()
            for user_id, start, reserved in lost:
                await session.execute(
                    text(
                        "UPDATE llm.budgets SET reserved_tokens = reserved_tokens - :reserved"
                        " WHERE user_id = :user AND period_start = :start"
                    ),
                    {"reserved": reserved, "user": user_id, "start": start},
                )
        return len(lost)

    async def usage(self, user_id: str, now: dt.datetime | None = None) -> PeriodUsage:
        """The user's tokens this period, by kind, and what counts against the budget."""
        start, resets_at = self.period_of(now or dt.datetime.now(dt.UTC))
        async with self.database.session() as session:
            row = (
                await session.execute(
                    text(
                        "SELECT coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
                        " coalesce(sum(cache_read_tokens), 0),"
                        " coalesce(sum(cache_write_tokens), 0)"
                        " FROM llm.calls WHERE user_id = :user AND period_start = :start"
                    ),
                    {"user": user_id, "start": start},
                )
            ).one()
            used = await session.scalar(
                text(
                    "SELECT used_tokens + reserved_tokens FROM llm.budgets"
                    " WHERE user_id = :user AND period_start = :start"
                ),
                {"user": user_id, "start": start},
            )
        tokens = Tokens(int(row[0]), int(row[1]), int(row[2]), int(row[3]))
        return PeriodUsage(tokens, int(used or 0), start, resets_at)


async def purge_user(session: AsyncSession, user_id: str) -> int:
    """Delete the user's calls and budgets (account deletion)."""
    calls = await session.execute(
        text("DELETE FROM llm.calls WHERE user_id = :user"), {"user": user_id}
    )
    await session.execute(text("DELETE FROM llm.budgets WHERE user_id = :user"), {"user": user_id})
    return int(calls.rowcount)  # type: ignore[attr-defined]
