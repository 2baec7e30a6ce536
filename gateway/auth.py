"""Edge authentication: a non-PUBLIC route needs a valid Bearer access token."""

import time
from collections.abc import Callable

from gateway.errors import unauthenticated
from libs.tokens import AccessTokenVerifier, InvalidToken

MAX_CACHED_TOKENS = 10_000


class EdgeAuth:
    """Verifies Bearer tokens once per ``cache_seconds``; the services verify them again."""

    def __init__(
        self,
        verifier: AccessTokenVerifier,
        *,
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._cache_seconds = cache_seconds
        self._clock = clock
        # token -> the wall-clock time until which it is trusted without re-verifying.
        self._trusted: dict[str, float] = {}

    async def check(self, authorization: str | None) -> None:
        """Return when ``authorization`` carries a valid access token, else raise a 401."""
        if not authorization:
            raise unauthenticated("This method needs a Bearer access token.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated("The Authorization header must be 'Bearer <access token>'.")
        now = self._clock()
        until = self._trusted.get(token)
        if until is not None and now < until:
            return
        try:
            claims = await self._verifier.verify(token)
        except InvalidToken:
            self._trusted.pop(token, None)
            raise unauthenticated("The access token is invalid or has expired.") from None
        if self._cache_seconds > 0:
            if len(self._trusted) >= MAX_CACHED_TOKENS:
                # Dropping everything is cheap and bounded; the next requests re-verify.
                self._trusted.clear()
            self._trusted[token] = min(now + self._cache_seconds, float(claims.expires_at))
