"""Signed-out sessions, so access tokens stop working before they expire.

The auth service records each revoked session id, and a per-user ``not_before`` on
sign-out-everywhere, in Redis; every service's AccessInterceptor checks them on each
call. A record only has to outlive the access tokens it blocks (15 min + leeway).
Checks fail open when Redis is unreachable: the token lifetime stays the bound.
"""

import logging
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.tokens import ACCESS_TOKEN_TTL, MAX_LEEWAY, AccessClaims

logger = logging.getLogger(__name__)

REVOKED_SESSION_KEY = "folio:auth:revoked-session:"
NOT_BEFORE_KEY = "folio:auth:not-before:"
REVOCATION_TTL = ACCESS_TOKEN_TTL + MAX_LEEWAY
# A failing Redis is reported at most this often, not once per call.
_WARN_INTERVAL = 30.0
# Checks sit on every authenticated call: a hung Redis must not hang them.
_SOCKET_TIMEOUT = 0.5


def revocation_client(redis_url: str) -> "aioredis.Redis":
    """A Redis client with short timeouts, for revocation checks and records."""
    return aioredis.Redis.from_url(
        redis_url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT
    )


class Revocations:
    """Reads and writes revoked sessions and per-user not_before times in Redis."""

    def __init__(self, client: "aioredis.Redis") -> None:
        self._client = client
        self._last_warning = 0.0

    async def revoke_sessions(self, session_ids: Iterable[str]) -> None:
        """Make the access tokens of these sessions fail from now on."""
        ids = list(session_ids)
        if not ids:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.set(REVOKED_SESSION_KEY + session_id, "1", ex=REVOCATION_TTL)
                await pipe.execute()
        except RedisError as error:
            self._warn("cannot record revoked sessions", error)

    async def revoke_user_tokens(self, user_id: str, not_before: int | None = None) -> None:
        """Make every access token of ``user_id`` issued before ``not_before`` fail."""
        moment = int(time.time()) if not_before is None else not_before
        try:
            await self._client.set(NOT_BEFORE_KEY + user_id, str(moment), ex=REVOCATION_TTL)
        except RedisError as error:
            self._warn("cannot record not_before", error)

    async def is_revoked(self, claims: AccessClaims) -> bool:
        """Whether the token's session was signed out or its user signed out everywhere."""
        try:
            revoked, not_before = await self._client.mget(
                REVOKED_SESSION_KEY + claims.session_id, NOT_BEFORE_KEY + claims.user_id
            )
        except RedisError as error:
            self._warn("cannot check revocations; accepting the token", error)
            return False
        if revoked is not None:
            return True
        return not_before is not None and claims.issued_at < int(not_before)

    async def close(self) -> None:
        await self._client.aclose()

    def _warn(self, message: str, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            logger.warning("%s: %s: %s", message, type(error).__name__, error)
