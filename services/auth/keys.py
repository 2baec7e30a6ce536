"""Signing keys: which one signs now, the published JWKS, and rotation.

Keys live in the secrets store (libs.secrets). A key newer than the configured active
key starts signing only once it has been published for ``signing_key_publish_delay``,
so every verifier (their JWKS caches refresh within ``jwks_ttl_seconds``) knows it
before the first token it signs arrives (RFC 8725 §3.10, OIDC Core §10.1.1). A key
stays published until every token it signed has expired.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from libs.config import Settings
from libs.secrets import (
    Secrets,
    SigningKey,
    activate_signing_key,
    add_signing_key,
    load_secrets,
    remove_signing_keys,
)
from libs.tokens import ACCESS_TOKEN_TTL, MAX_LEEWAY
from services.auth.settings import SigningSettings

logger = logging.getLogger(__name__)


def signing_key(secrets: Secrets, *, now: float, publish_delay: float) -> SigningKey:
    """The newest key published long enough ago, never older than the active key."""
    active = secrets.active_key()
    ready = [
        key
        for key in secrets.signing_keys
        if key.created_at > active.created_at and key.created_at + publish_delay <= now
    ]
    return max(ready, key=lambda key: key.created_at, default=active)


def retired_kids(secrets: Secrets, *, now: float, publish_delay: float) -> list[str]:
    """Keys no unexpired token can carry: superseded longer ago than a token lives."""
    current = signing_key(secrets, now=now, publish_delay=publish_delay)
    retired = []
    for key in secrets.signing_keys:
        if key.created_at >= current.created_at:
            continue
        successors = [k.created_at for k in secrets.signing_keys if k.created_at > key.created_at]
        superseded_at = min(successors) + publish_delay
        if now - superseded_at > ACCESS_TOKEN_TTL + MAX_LEEWAY:
            retired.append(key.kid)
    return retired


@dataclass(frozen=True)
class Rotation:
    """What ``folio keys rotate`` did."""

    new_kid: str
    signs_from: int
    signing_kid: str
    removed_kids: list[str]


def rotate_signing_keys(settings: SigningSettings, *, now: float | None = None) -> Rotation:
    """Record the key signing now as active, drop retired keys, add a new key."""
    moment = time.time() if now is None else now
    delay = settings.signing_key_publish_delay_seconds
    current = load_secrets(settings)
    signing = signing_key(current, now=moment, publish_delay=delay)
    if signing.kid != current.active_kid:
        current = activate_signing_key(settings, signing.kid)
    removed = retired_kids(current, now=moment, publish_delay=delay)
    if removed:
        remove_signing_keys(settings, removed)
    new = add_signing_key(settings)
    return Rotation(
        new_kid=new.kid,
        signs_from=new.created_at + delay,
        signing_kid=signing.kid,
        removed_kids=removed,
    )


class KeyRing:
    """The secrets the auth service signs with, re-read in the background while serving.

    A rotation (a new key in the secrets store) is picked up within
    ``signing_keys_reload_seconds``, without a restart; a failed re-read keeps the keys
    already loaded.
    """

    def __init__(
        self,
        settings: SigningSettings,
        *,
        load: Callable[[Settings], Secrets] = load_secrets,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._load = load
        self._clock = clock
        self._reload_after = settings.signing_keys_reload_seconds
        self._publish_delay = settings.signing_key_publish_delay_seconds
        self._secrets: Secrets | None = None
        self._loaded_at = 0.0
        self._reloading: asyncio.Task[None] | None = None

    async def load(self) -> Secrets:
        """Read the secrets now (at start-up, and when a test wants to be sure)."""
        secrets = await asyncio.to_thread(self._load, self._settings)
        self._secrets = secrets
        self._loaded_at = self._clock()
        return secrets

    @property
    def secrets(self) -> Secrets:
        """The current secrets; a stale copy triggers a re-read in the background."""
        if self._secrets is None:
            raise RuntimeError("KeyRing.load() was not awaited at start-up")
        if self._clock() - self._loaded_at >= self._reload_after and self._reloading is None:
            self._reloading = asyncio.get_running_loop().create_task(self._reload())
        return self._secrets

    def signing_key(self) -> SigningKey:
        """The key new access tokens are signed with."""
        return signing_key(self.secrets, now=self._clock(), publish_delay=self._publish_delay)

    def jwks(self) -> dict[str, Any]:
        """The public half of every key, the next and the retired ones included."""
        return self.secrets.public_jwks()

    async def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()

    async def _reload(self) -> None:
        try:
            await self.load()
        except Exception as error:  # keep signing with the keys we have
            self._loaded_at = self._clock()
            logger.warning("cannot re-read signing keys: %s: %s", type(error).__name__, error)
        finally:
            self._reloading = None
