"""Revocation checks answered from memory stay as safe as a Redis read per call."""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from libs.ids import new_id
from libs.revocation import (
    REVOKED_SESSION_KEY,
    Revocations,
    revocation_client,
    subscription_client,
)
from libs.tokens import AccessClaims

DEADLINE = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def claims() -> AccessClaims:
    now = int(time.time())
    return AccessClaims(
        user_id=new_id(),
        session_id=new_id(),
        token_id=new_id(),
        issued_at=now,
        expires_at=now + 900,
    )


async def until_revoked(revocations: Revocations, token: AccessClaims, seconds: float) -> float:
    """Seconds until ``revocations`` refuses ``token``; fails after ``seconds``."""
    started = time.monotonic()
    while not await revocations.is_revoked(token):
        assert time.monotonic() - started < seconds, "the revocation was not seen in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def subscriber_name() -> str:
    return f"folio-revocations-test-{secrets.token_hex(4)}"


@pytest.fixture
async def watched(
    redis_db_url: str, subscriber_name: str
) -> AsyncIterator[tuple[Revocations, Clock]]:
    """A service's view of revocations, subscribed, with a clock the test moves."""
    clock = Clock()
    revocations = Revocations(
        revocation_client(redis_db_url),
        subscription_client(redis_db_url, name=subscriber_name),
        clock=clock,
    )
    await revocations.is_revoked(claims())  # starts the subscription
    await asyncio.wait_for(revocations.subscribed.wait(), DEADLINE)
    yield revocations, clock
    await revocations.close()


async def test_a_remembered_session_is_refused_as_soon_as_another_process_revokes_it(
    redis_db_url: str, watched: tuple[Revocations, Clock]
) -> None:
    service, _ = watched
    token = claims()
    assert not await service.is_revoked(token)  # read from Redis, then remembered
    auth = Revocations(revocation_client(redis_db_url))
    try:
        await auth.revoke_sessions([token.session_id])
        assert await until_revoked(service, token, 1.0) < 1.0
        other = claims()
        assert not await service.is_revoked(other)
        await auth.revoke_user_tokens(other.user_id, other.issued_at + 1)
        assert await until_revoked(service, other, 1.0) < 1.0
    finally:
        await auth.close()


async def test_answers_come_from_memory_for_at_most_max_age(
    redis_db_url: str, watched: tuple[Revocations, Clock]
) -> None:
    service, clock = watched
    token = claims()
    assert not await service.is_revoked(token)
    # Written without publishing, as if the message were lost: memory still answers...
    async with aioredis.Redis.from_url(redis_db_url) as raw:
        await raw.set(REVOKED_SESSION_KEY + token.session_id, "1")
    assert not await service.is_revoked(token)
    # ...but never past max_age.
    clock.now += 61
    assert await service.is_revoked(token)


async def test_a_dropped_subscription_falls_back_to_reading_redis(
    redis_db_url: str, watched: tuple[Revocations, Clock], subscriber_name: str
) -> None:
    service, _ = watched
    token = claims()
    assert not await service.is_revoked(token)
    async with aioredis.Redis.from_url(redis_db_url) as raw:
        killed = 0
        for client in await raw.client_list(_type="pubsub"):
            if client.get("name") == subscriber_name:
                killed += await raw.client_kill_filter(_id=client["id"])
        assert killed == 1
        # A record the subscriber cannot have received: only a Redis read finds it.
        await raw.set(REVOKED_SESSION_KEY + token.session_id, "1")
    await until_revoked(service, token, DEADLINE)
    # And the subscription comes back by itself.
    await asyncio.wait_for(service.subscribed.wait(), DEADLINE)
    assert await service.is_revoked(token)


async def test_without_a_subscription_every_check_reads_redis(redis_db_url: str) -> None:
    direct = Revocations(revocation_client(redis_db_url))
    try:
        token = claims()
        assert not await direct.is_revoked(token)
        async with aioredis.Redis.from_url(redis_db_url) as raw:
            await raw.set(REVOKED_SESSION_KEY + token.session_id, "1")
        assert await direct.is_revoked(token)
    finally:
        await direct.close()
