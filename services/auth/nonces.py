"""Nonces of ID tokens, accepted once (OIDC Core §3.1.3.7, §15.5.2)."""

import hashlib

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.errors import Unavailable

KEY_PREFIX = "folio:auth:nonce:"
# Google's ID tokens live an hour; a nonce need not be remembered longer (plus skew).
NONCE_TTL_SECONDS = 3600 + 60


class NonceRegistry:
    """Remembers used nonces in Redis, shared by every auth replica."""

    def __init__(self, client: "aioredis.Redis") -> None:
        self._client = client

    async def first_use(self, nonce: str) -> bool:
        """True the first time ``nonce`` is seen, False after."""
        key = KEY_PREFIX + hashlib.sha256(nonce.encode()).hexdigest()
        try:
            return bool(await self._client.set(key, "1", nx=True, ex=NONCE_TTL_SECONDS))
        except RedisError as error:
            # Fail closed: without Redis a replayed nonce cannot be told from a new one.
            raise Unavailable("cannot check the nonce right now") from error
