"""Rate limits kept in Redis (GCRA), so every auth replica counts the same attempts."""

import hashlib
import logging
import math
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.errors import ResourceExhausted

logger = logging.getLogger(__name__)

KEY_PREFIX = "folio:auth:rate:"

# Generic cell rate algorithm: one key per bucket holding the "theoretical arrival time".
# A burst of `limit` passes at once, then one more per window/limit; the answer says how
# many milliseconds to wait. Redis's own clock keeps replicas consistent.
_GCRA = """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst
if allow_at > now then
  return math.ceil(allow_at - now)
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(new_tat - now)))
return 0
"""


class RateLimiter:
    """Counts attempts per (bucket, key); raises ResourceExhausted with retry_after."""

    def __init__(self, client: "aioredis.Redis") -> None:
        self._client = client
        self._script = client.register_script(_GCRA)
        self._last_warning = 0.0

    async def hit(self, bucket: str, key: str, *, limit: int, window: int) -> None:
        """Count one attempt; RESOURCE_EXHAUSTED once more than ``limit`` per ``window`` s."""
        if limit <= 0:
            return
        # Whole milliseconds: Lua prints numbers with 14 digits, enough for integers only.
        interval_ms = math.ceil(window * 1000 / limit)
        # Hashed: client addresses and subjects need not sit in Redis in the clear.
        digest = hashlib.sha256(f"{bucket}\0{key}".encode()).hexdigest()[:32]
        try:
            wait_ms = int(
                await self._script(
                    keys=[f"{KEY_PREFIX}{bucket}:{digest}"],
                    args=[interval_ms, interval_ms * limit],
                )
            )
        except RedisError as error:
            # Failing open: an outage of Redis must not lock everyone out of Folio.
            self._warn(error)
            return
        if wait_ms > 0:
            raise ResourceExhausted(
                "too many attempts; try again later",
                retry_after=max(1, math.ceil(wait_ms / 1000)),
            )

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 30:
            self._last_warning = now
            logger.warning("rate limits not enforced, Redis failed: %s", error)
