"""The refresh grace window: what a rotation issued, kept briefly for the token it replaced.

Two tabs of one app refresh at once with the same refresh token. The first rotates it;
the second presents a token that was just replaced, which looks exactly like theft and
would revoke the session. Within ``refresh_reuse_grace_seconds`` of a rotation, the
replaced token instead gets back the pair that rotation issued, as the major identity
providers do; after the window, reuse still revokes the whole session.

The pair is kept in Redis, shared by every auth replica, sealed (AES-GCM) with a key
derived from the replaced token: only someone who holds that token can read it, and
Redis never holds a usable refresh token in the clear. It is written before the
rotation commits, so a concurrent refresh waiting on the session's row lock finds it.
"""

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY_PREFIX = "folio:auth:rotated:"
_NONCE_BYTES = 12


@dataclass(frozen=True)
class IssuedTokens:
    """What a refresh answers: an access token (with its expiry) and a refresh token."""

    access_token: str
    expires_at: int
    refresh_token: str
    session_id: str


def _derive(purpose: bytes, token: str) -> bytes:
    return hashlib.sha256(b"folio-refresh-grace:" + purpose + b":" + token.encode()).digest()


class RecentRotations:
    """The pairs issued in the last ``grace_seconds``, by the refresh token they replaced."""

    def __init__(self, client: "aioredis.Redis", grace_seconds: float) -> None:
        self._client = client
        self._grace_ms = int(grace_seconds * 1000)

    async def remember(self, replaced: str, pair: IssuedTokens) -> None:
        """Keep ``pair`` for whoever presents ``replaced`` within the window."""
        if self._grace_ms <= 0:
            return
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(_derive(b"seal", replaced)).encrypt(
            nonce, json.dumps(asdict(pair)).encode(), None
        )
        try:
            await self._client.set(self._key(replaced), nonce + sealed, px=self._grace_ms)
        except RedisError as error:
            # Without it a second tab's refresh is treated as reuse, as with no window.
            log.warning("cannot keep the rotated pair: %s: %s", type(error).__name__, error)

    async def recall(self, replaced: str) -> IssuedTokens | None:
        """The pair a rotation of ``replaced`` issued, while the window lasts."""
        if self._grace_ms <= 0:
            return None
        try:
            stored = await self._client.get(self._key(replaced))
        except RedisError as error:
            log.warning("cannot read rotated pairs: %s: %s", type(error).__name__, error)
            return None
        if not isinstance(stored, bytes) or not stored:
            return None
        try:
            opened = AESGCM(_derive(b"seal", replaced)).decrypt(
                stored[:_NONCE_BYTES], stored[_NONCE_BYTES:], None
            )
        except InvalidTag:
            return None
        return IssuedTokens(**json.loads(opened))

    @staticmethod
    def _key(replaced: str) -> str:
        return KEY_PREFIX + _derive(b"lookup", replaced).hex()
