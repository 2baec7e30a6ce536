"""Signed-out sessions, so access tokens stop working before they expire.

The auth service records each revoked session id, and a per-user ``not_before`` on
sign-out-everywhere, in Redis, and publishes each record on one pub/sub channel. Every
service's AccessPolicy checks them on each call.

Checks are answered from memory while this process is subscribed to that channel: the
first call for a session reads Redis, and what it read stays valid until a published
record changes it (or at most ``max_age`` seconds, a bound should a message be lost).
While the subscription is down nothing is cached: every check reads Redis, and the
cache starts empty once the subscription is back, since records may have been missed.
A record only has to outlive the access tokens it blocks (15 min + leeway). Checks fail
open when Redis is unreachable: the token lifetime stays the bound.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from libs.tokens import ACCESS_TOKEN_TTL, MAX_LEEWAY, AccessClaims

logger = logging.getLogger(__name__)
T = TypeVar("T")

REVOKED_SESSION_KEY = "folio:auth:revoked-session:"
NOT_BEFORE_KEY = "folio:auth:not-before:"
# Each record is also published on this channel, suffixed with the Redis database index
# (channels span databases): "s <session id>" or "u <user id> <not_before>".
CHANNEL = "folio:auth:revocations:"
REVOCATION_TTL = ACCESS_TOKEN_TTL + MAX_LEEWAY
# How long a remembered answer may be used, even while subscribed.
MAX_AGE_SECONDS = 60.0
# Remembered sessions and users, each; the oldest are forgotten first.
MAX_ENTRIES = 50_000
# A failing Redis is reported at most this often, not once per call.
_WARN_INTERVAL = 30.0
# Checks sit on every authenticated call: a hung Redis must not hang them.
_SOCKET_TIMEOUT = 0.5
_RESUBSCRIBE_MIN, _RESUBSCRIBE_MAX = 0.2, 5.0
# The subscription pings this often, so a connection that died silently is noticed.
_HEALTH_CHECK_SECONDS = 2.0


def revocation_client(redis_url: str) -> "aioredis.Redis":
    """A Redis client with short timeouts, for revocation checks and records."""
    return aioredis.Redis.from_url(
        redis_url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT
    )


def channel(client: "aioredis.Redis") -> str:
    """The revocation channel of the database ``client`` uses."""
    return f"{CHANNEL}{client.connection_pool.connection_kwargs.get('db', 0)}"


def subscription_client(redis_url: str, name: str = "folio-revocations") -> "aioredis.Redis":
    """A Redis client for the channel: no silent reconnects (records may be missed in one)."""
    return aioredis.Redis.from_url(
        redis_url,
        client_name=name,
        socket_connect_timeout=_SOCKET_TIMEOUT,
        health_check_interval=_HEALTH_CHECK_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )


def revocations_from_url(redis_url: str) -> "Revocations":
    """Revocations on ``redis_url``, answered from memory while subscribed."""
    return Revocations(revocation_client(redis_url), subscription_client(redis_url))


async def record_not_before(client: "aioredis.Redis", user_id: str, not_before: int) -> None:
    """Store and publish ``not_before`` for ``user_id``; raises RedisError if it could not."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(NOT_BEFORE_KEY + user_id, str(not_before), ex=REVOCATION_TTL)
        pipe.publish(channel(client), f"u {user_id} {not_before}")
        await pipe.execute()


class Revocations:
    """Writes revocation records, and checks tokens against them (from memory when it can)."""

    def __init__(
        self,
        client: "aioredis.Redis",
        subscriber: "aioredis.Redis | None" = None,
        *,
        max_age: float = MAX_AGE_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        # Without a subscription client nothing is remembered: every check reads Redis.
        self._subscriber = subscriber
        self._max_age = max_age
        self._max_entries = max_entries
        self._clock = clock
        self._last_warning = 0.0
        # session id -> (revoked, read at); user id -> (not_before or 0, read at)
        self._sessions: dict[str, tuple[bool, float]] = {}
        self._users: dict[str, tuple[int, float]] = {}
        # Bumped by every published record and every (re)subscription: a Redis read that
        # overlaps one may be older than it, so its answer is used once, not remembered.
        self._generation = 0
        self.subscribed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ records

    async def revoke_sessions(self, session_ids: Iterable[str]) -> None:
        """Make the access tokens of these sessions fail from now on."""
        ids = list(session_ids)
        if not ids:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.set(REVOKED_SESSION_KEY + session_id, "1", ex=REVOCATION_TTL)
                for session_id in ids:
                    pipe.publish(channel(self._client), f"s {session_id}")
                await pipe.execute()
        except RedisError as error:
            self._warn("cannot record revoked sessions", error)

    async def revoke_user_tokens(self, user_id: str, not_before: int | None = None) -> None:
        """Make every access token of ``user_id`` issued before ``not_before`` fail."""
        moment = int(time.time()) if not_before is None else not_before
        try:
            await record_not_before(self._client, user_id, moment)
        except RedisError as error:
            self._warn("cannot record not_before", error)

    # ------------------------------------------------------------------ checks

    async def is_revoked(self, claims: AccessClaims) -> bool:
        """Whether the token's session was signed out or its user signed out everywhere."""
        if self._watcher is None and self._subscriber is not None and not self._closed:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="revocation-watcher"
            )
        remembered = self._remembered(claims)
        if remembered is not None:
            return remembered
        generation = self._generation
        try:
            revoked, not_before = await self._client.mget(
                REVOKED_SESSION_KEY + claims.session_id, NOT_BEFORE_KEY + claims.user_id
            )
        except RedisError as error:
            self._warn("cannot check revocations; accepting the token", error)
            return False
        is_revoked = revoked is not None
        moment = int(not_before) if not_before is not None else 0
        if self.subscribed.is_set() and generation == self._generation:
            now = self._clock()
            self._remember(self._sessions, claims.session_id, (is_revoked, now))
            self._remember(self._users, claims.user_id, (moment, now))
        return is_revoked or claims.issued_at < moment

    def _remembered(self, claims: AccessClaims) -> bool | None:
        if not self.subscribed.is_set():
            return None
        session = self._sessions.get(claims.session_id)
        user = self._users.get(claims.user_id)
        if session is None or user is None:
            return None
        oldest = self._clock() - self._max_age
        if session[1] < oldest or user[1] < oldest:
            return None
        return session[0] or claims.issued_at < user[0]

    def _remember(self, entries: dict[str, T], key: str, value: T) -> None:
        entries.pop(key, None)
        entries[key] = value
        if len(entries) > self._max_entries:
            del entries[next(iter(entries))]

    # ------------------------------------------------------------------ subscription

    async def _watch(self) -> None:
        """Keep a subscription to the channel, applying records as they arrive."""
        assert self._subscriber is not None
        delay = _RESUBSCRIBE_MIN
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(channel(self._subscriber))
                while True:
                    message = await pubsub.get_message(timeout=_HEALTH_CHECK_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        # Redis confirmed: every record published from now on reaches us.
                        self._forget_all()
                        self.subscribed.set()
                        delay = _RESUBSCRIBE_MIN
                    elif message["type"] == "message":
                        self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                self._warn("revocation subscription lost; checking Redis on every call", error)
            finally:
                self.subscribed.clear()
                self._forget_all()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESUBSCRIBE_MAX)

    def _apply(self, data: object) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        self._generation += 1
        kind, _, rest = text.partition(" ")
        now = self._clock()
        if kind == "s" and rest:
            self._remember(self._sessions, rest, (True, now))
        elif kind == "u":
            user_id, _, moment = rest.partition(" ")
            if user_id and moment.isdigit():
                known = self._users.get(user_id)
                latest = max(int(moment), known[0] if known else 0)
                self._remember(self._users, user_id, (latest, now))

    def _forget_all(self) -> None:
        self._generation += 1
        self._sessions.clear()
        self._users.clear()

    async def close(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._client.aclose()
        if self._subscriber is not None:
            await self._subscriber.aclose()

    def _warn(self, message: str, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            logger.warning("%s: %s: %s", message, type(error).__name__, error)
