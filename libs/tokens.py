"""Access tokens (ES256, resolved through a JWKS cache) and service tokens (HS256, internal key).

The two kinds use different, hard-coded algorithms and ``typ`` values, so a user's access
token never passes as a service token and a service token never passes as an access token
(RFC 8725 §3.11, RFC 9068 §4).
"""

import asyncio
import base64
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from libs.config import Settings
from libs.secrets import KID_PATTERN, SigningKey, load_secrets

logger = logging.getLogger(__name__)

ACCESS_TOKEN_TYPE = "at+jwt"
SERVICE_TOKEN_TYPE = "svc+jwt"
ACCESS_TOKEN_TTL = 900
SERVICE_TOKEN_TTL = 300
MAX_LEEWAY = 60
MAX_TOKEN_BYTES = 8 * 1024
SERVICE_TOKEN_ISSUER = "folio-internal"
ACCESS_ALGORITHM = "ES256"
SERVICE_ALGORITHM = "HS256"
# HS256 needs a key at least as long as its 32-byte output (RFC 7518 §3.2).
MIN_SERVICE_KEY_BYTES = 32
# Re-mint a cached service token when fewer seconds than this remain, so a call that
# is slow to reach the callee still arrives with a valid token.
SERVICE_TOKEN_REMINT_MARGIN = 60

ACCESS_REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "jti", "sid"]
SERVICE_REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "jti"]

# Compact JWS only: three non-empty base64url segments. This turns away JWE (five
# segments), the JSON serialization and padded or otherwise odd encodings up front.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")

# One configured instance per token kind: `require` makes PyJWT insist on claims it
# otherwise checks only "if present", and the key-length check only reaches the JWS
# layer through the constructor.
_ACCESS_JWT = jwt.PyJWT(
    options={
        "require": ACCESS_REQUIRED_CLAIMS,
        "strict_aud": True,
        "enforce_minimum_key_length": True,
    }
)
_SERVICE_JWT = jwt.PyJWT(
    options={
        "require": SERVICE_REQUIRED_CLAIMS,
        "strict_aud": True,
        "enforce_minimum_key_length": True,
    }
)

JwksFetch = Callable[[], Awaitable[dict[str, Any]]]
# Tokens remembered as verified, per verifier; the oldest are forgotten first.
VERIFIED_CACHE_SIZE = 10_000
V = TypeVar("V")


class VerifiedTokens(Generic[V]):
    """Tokens that passed every check, with what they verified to, until they expire.

    A token presented again within its lifetime costs a dict lookup instead of a
    signature check. Only a successful verification is remembered; the expiry (with
    the verifier's leeway) is checked on every hit. Safe to share between threads.
    """

    def __init__(self, max_entries: int = VERIFIED_CACHE_SIZE) -> None:
        self._max_entries = max_entries
        self._entries: dict[str, tuple[V, float]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> V | None:
        hit = self._entries.get(token)
        if hit is None:
            return None
        if hit[1] <= time.time():
            self._entries.pop(token, None)
            return None
        return hit[0]

    def put(self, token: str, value: V, until: float) -> None:
        with self._lock:
            if len(self._entries) >= self._max_entries:
                self._entries.pop(next(iter(self._entries)), None)
            self._entries[token] = (value, until)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class InvalidToken(Exception):
    """A token was refused; ``reason`` is short and never contains the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AccessClaims:
    """The verified claims of a user's access token."""

    user_id: str
    session_id: str
    token_id: str
    issued_at: int
    expires_at: int


@dataclass(frozen=True)
class ServiceClaims:
    """The verified claims of a service token; the on-behalf-of user travels as metadata."""

    caller: str
    audience: str
    expires_at: int


def sign_access_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    user_id: str,
    session_id: str,
    ttl: int = ACCESS_TOKEN_TTL,
    now: int | None = None,
) -> str:
    """Sign an ES256 access token for ``user_id`` in session ``session_id``."""
    for name, value in (
        ("issuer", issuer),
        ("audience", audience),
        ("user_id", user_id),
        ("session_id", session_id),
    ):
        if not value:
            raise ValueError(f"{name} must be a non-empty string")
    if not 0 < ttl <= ACCESS_TOKEN_TTL:
        raise ValueError(f"access token ttl must be in (0, {ACCESS_TOKEN_TTL}] seconds")
    issued_at = int(time.time()) if now is None else int(now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": user_id,
        "sid": session_id,
        "iat": issued_at,
        "exp": issued_at + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    return _ACCESS_JWT.encode(
        claims,
        key.private_key(),
        algorithm=ACCESS_ALGORITHM,
        headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE},
    )


class JwksCache:
    """kid -> ES256 public key, refreshed from ``fetch``; use it from one event loop.

    The key set is refreshed on the first lookup after ``ttl`` seconds; a failed or
    garbage fetch keeps the last good set (and is retried no sooner than
    ``min_refresh_interval``); an unknown kid triggers at most one fetch per
    ``min_refresh_interval``, so random kids cannot hammer the key source; concurrent
    refreshes share one fetch.
    """

    def __init__(
        self,
        fetch: JwksFetch,
        *,
        ttl: float = 300.0,
        min_refresh_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or min_refresh_interval < 0:
            raise ValueError("ttl must be positive and min_refresh_interval non-negative")
        self._fetch = fetch
        self._ttl = ttl
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at: float | None = None
        self._last_attempt: float | None = None
        self._last_failure: float | None = None
        self._inflight: asyncio.Task[bool] | None = None

    @property
    def kids(self) -> frozenset[str]:
        """The kids currently held."""
        return frozenset(self._keys)

    def peek(self, kid: str) -> jwt.PyJWK | None:
        """The cached key for ``kid``, without any I/O."""
        return self._keys.get(kid)

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The key for ``kid``, refreshing when the set is stale or the kid is new."""
        if self._inflight is not None or self._is_stale():
            await self.refresh()
        key = self._keys.get(kid)
        if key is None and self._may_refresh_for_unknown_kid():
            await self.refresh()
            key = self._keys.get(kid)
        return key

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch already running; True if the key set was replaced."""
        task = self._inflight
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch_and_swap())
            self._inflight = task
        # shield: one cancelled caller must not cancel the fetch the others wait on.
        return await asyncio.shield(task)

    def _is_stale(self) -> bool:
        now = self._clock()
        if self._last_failure is not None and now - self._last_failure < self._min_refresh_interval:
            return False
        return self._loaded_at is None or now - self._loaded_at >= self._ttl

    def _may_refresh_for_unknown_kid(self) -> bool:
        if self._last_attempt is None:
            return True
        return self._clock() - self._last_attempt >= self._min_refresh_interval

    async def _fetch_and_swap(self) -> bool:
        self._last_attempt = self._clock()
        try:
            try:
                keys = _usable_keys(await self._fetch())
            except Exception as err:  # any fetch or parse failure keeps the last good keys
                self._last_failure = self._clock()
                logger.warning(
                    "JWKS refresh failed, keeping the last good keys: %s: %s",
                    type(err).__name__,
                    err,
                    extra={"kept_kids": sorted(self._keys)},
                )
                return False
            self._keys = keys
            self._loaded_at = self._clock()
            self._last_failure = None
            return True
        finally:
            self._inflight = None


def _usable_keys(document: object) -> dict[str, jwt.PyJWK]:
    """The ES256 P-256 signing keys of a JWKS document; raises ValueError if there are none."""
    if not isinstance(document, dict):
        raise ValueError("JWKS is not a JSON object")
    try:
        key_set = jwt.PyJWKSet.from_dict(document)
    except jwt.PyJWTError as err:
        raise ValueError(f"unusable JWKS: {err}") from None
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in key_set.keys:
        kid = jwk.key_id
        if (
            jwk.algorithm_name != ACCESS_ALGORITHM
            or not isinstance(jwk.key, ec.EllipticCurvePublicKey)
            or not isinstance(jwk.key.curve, ec.SECP256R1)
            or jwk.public_key_use not in (None, "sig")
            or not isinstance(kid, str)
            or not KID_PATTERN.fullmatch(kid)
            or kid in keys
        ):
            continue
        keys[kid] = jwk
    if not keys:
        raise ValueError("JWKS has no usable ES256 P-256 keys")
    return keys


def jwks_fetcher_from_secrets(settings: Settings) -> JwksFetch:
    """A JWKS source reading the signing keys through ``load_secrets`` off the event loop."""

    async def fetch() -> dict[str, Any]:
        return await asyncio.to_thread(lambda: load_secrets(settings).public_jwks())

    return fetch


class AccessTokenVerifier:
    """Verifies access tokens: ES256 only, typ at+jwt, every claim required."""

    def __init__(self, keys: JwksCache, *, issuer: str, audience: str, leeway: float = 30) -> None:
        _check_leeway(leeway)
        if not issuer or not audience:
            raise ValueError("issuer and audience must be non-empty")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        # token -> (claims, kid): a hit stands only while its key is still in the key set.
        self._verified: VerifiedTokens[tuple[AccessClaims, str]] = VerifiedTokens()

    async def verify(self, token: str) -> AccessClaims:
        """The claims of a valid access token; may refresh the key set."""
        claims = self.remembered(token)
        if claims is not None:
            return claims
        kid = self._kid(token)
        return self._remember(token, kid, self._decode(token, await self._keys.get(kid)))

    def verify_cached(self, token: str) -> AccessClaims:
        """Like ``verify`` but only with keys already cached; never does I/O."""
        claims = self.remembered(token)
        if claims is not None:
            return claims
        kid = self._kid(token)
        return self._remember(token, kid, self._decode(token, self._keys.peek(kid)))

    def remembered(self, token: str) -> AccessClaims | None:
        """The claims of ``token`` if it was verified before and is still valid; no parsing."""
        hit = self._verified.get(token)
        if hit is None or self._keys.peek(hit[1]) is None:
            return None
        return hit[0]

    def _remember(self, token: str, kid: str, claims: AccessClaims) -> AccessClaims:
        self._verified.put(token, (claims, kid), claims.expires_at + self._leeway)
        return claims

    @staticmethod
    def _kid(token: object) -> str:
        header = _checked_header(token, alg=ACCESS_ALGORITHM, typ=ACCESS_TOKEN_TYPE)
        kid = header.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise InvalidToken("missing or malformed kid")
        # jku, x5u and jwk headers are deliberately ignored: keys come only from our JWKS.
        return kid

    def _decode(self, token: str, key: jwt.PyJWK | None) -> AccessClaims:
        if key is None:
            raise InvalidToken("unknown signing key")
        try:
            payload = _ACCESS_JWT.decode(
                token,
                key,
                algorithms=[ACCESS_ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
            )
        except jwt.PyJWTError as err:
            raise InvalidToken(_reason(err)) from err
        user_id, session_id, token_id = payload["sub"], payload["sid"], payload["jti"]
        if not all(isinstance(v, str) and v for v in (user_id, session_id, token_id)):
            raise InvalidToken("malformed sub, sid or jti")
        return AccessClaims(
            user_id=user_id,
            session_id=session_id,
            token_id=token_id,
            issued_at=_numeric_date(payload["iat"]),
            expires_at=_numeric_date(payload["exp"]),
        )


_default_verifier: AccessTokenVerifier | None = None


def configure_default_verifier(verifier: AccessTokenVerifier | None) -> None:
    """Set (or clear, with None) the verifier ``decode_token`` uses."""
    global _default_verifier
    _default_verifier = verifier


def decode_token(token: str) -> str | None:
    """The user id of a valid access token, else None (the original backend's helper)."""
    verifier = _default_verifier
    if verifier is None:
        raise RuntimeError(
            "no access-token verifier configured; call configure_default_verifier() at startup"
        )
    try:
        return verifier.verify_cached(token).user_id
    except InvalidToken:
        return None


def sign_service_token(
    key: str,
    *,
    caller: str,
    audience: str,
    ttl: int = SERVICE_TOKEN_TTL,
    now: int | None = None,
) -> str:
    """Sign an HS256 service token from ``caller`` to ``audience`` with the internal key."""
    _check_service_key(key)
    _check_service_name(caller, "caller")
    _check_service_name(audience, "audience")
    if not 0 < ttl <= SERVICE_TOKEN_TTL:
        raise ValueError(f"service token ttl must be in (0, {SERVICE_TOKEN_TTL}] seconds")
    issued_at = int(time.time()) if now is None else int(now)
    claims = {
        "iss": SERVICE_TOKEN_ISSUER,
        "sub": f"svc:{caller}",
        "aud": audience,
        "iat": issued_at,
        "exp": issued_at + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    return _SERVICE_JWT.encode(
        claims, key, algorithm=SERVICE_ALGORITHM, headers={"typ": SERVICE_TOKEN_TYPE}
    )


_verified_service_tokens: VerifiedTokens[ServiceClaims] = VerifiedTokens()


def verify_service_token(
    token: str, key: str, *, audience: str, leeway: float = 30
) -> ServiceClaims:
    """The claims of a valid service token addressed to ``audience``."""
    # Remembered per (token, key, audience, leeway): a hit is exactly a repeat of this check.
    remembered_as = f"{token}|{audience}|{leeway}|{key}"
    claims = _verified_service_tokens.get(remembered_as)
    if claims is None:
        claims = _verify_service_token(token, key, audience=audience, leeway=leeway)
        _verified_service_tokens.put(remembered_as, claims, claims.expires_at + leeway)
    return claims


def _verify_service_token(token: str, key: str, *, audience: str, leeway: float) -> ServiceClaims:
    _check_leeway(leeway)
    _check_service_key(key)
    _checked_header(token, alg=SERVICE_ALGORITHM, typ=SERVICE_TOKEN_TYPE)
    try:
        payload = _SERVICE_JWT.decode(
            token,
            key,
            algorithms=[SERVICE_ALGORITHM],
            audience=audience,
            issuer=SERVICE_TOKEN_ISSUER,
            leeway=leeway,
        )
    except jwt.PyJWTError as err:
        raise InvalidToken(_reason(err)) from err
    subject = payload["sub"]
    caller = subject.removeprefix("svc:") if isinstance(subject, str) else ""
    if caller == subject or not _SERVICE_NAME.fullmatch(caller):
        raise InvalidToken("malformed sub")
    issued_at, expires_at = _numeric_date(payload["iat"]), _numeric_date(payload["exp"])
    if expires_at - issued_at > SERVICE_TOKEN_TTL:
        raise InvalidToken("service token lifetime too long")
    return ServiceClaims(caller=caller, audience=audience, expires_at=expires_at)


class ServiceTokenCache:
    """Service tokens of one caller, one per audience, re-minted shortly before expiry."""

    def __init__(self, key: str, caller: str, *, clock: Callable[[], float] = time.time) -> None:
        _check_service_key(key)
        _check_service_name(caller, "caller")
        self._key = key
        self._caller = caller
        self._clock = clock
        self._tokens: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def token_for(self, audience: str) -> str:
        """A service token for calling ``audience``, valid for at least another minute."""
        now = self._clock()
        with self._lock:
            cached = self._tokens.get(audience)
            if cached is not None and cached[1] - now >= SERVICE_TOKEN_REMINT_MARGIN:
                return cached[0]
            issued_at = int(now)
            token = sign_service_token(
                self._key, caller=self._caller, audience=audience, now=issued_at
            )
            self._tokens[audience] = (token, issued_at + SERVICE_TOKEN_TTL)
            return token


def _checked_header(token: object, *, alg: str, typ: str) -> dict[str, Any]:
    """The JOSE header, after the checks that must pass before any key is looked up."""
    if not isinstance(token, str):
        raise InvalidToken("token is not a string")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("token too large")
    if not _COMPACT_JWS.fullmatch(token):
        raise InvalidToken("malformed token")
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        raise InvalidToken("malformed header") from None
    if not isinstance(header, dict):
        raise InvalidToken("malformed header")
    # Exact match: "none", "noNE", "HS256" on an access token, "ES256" on a service token.
    if header.get("alg") != alg:
        raise InvalidToken("unexpected alg")
    token_typ = header.get("typ")
    # RFC 9068 §4 allows the media type with or without "application/"; compare caselessly.
    if not isinstance(token_typ, str) or token_typ.lower().removeprefix("application/") != typ:
        raise InvalidToken("unexpected typ")
    if "crit" in header:
        raise InvalidToken("crit header not supported")
    return header


def _reason(err: jwt.PyJWTError) -> str:
    if isinstance(err, jwt.MissingRequiredClaimError):
        return f"missing claim {err.claim}"
    if isinstance(err, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(err, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(err, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(err, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(err, jwt.InvalidSignatureError):
        return "bad signature"
    return "invalid token"


def _numeric_date(value: object) -> int:
    # PyJWT accepts anything int() accepts (even "123"); we mint plain integers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("malformed iat or exp")
    return int(value)


def _check_leeway(leeway: float) -> None:
    if not 0 <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")


def _check_service_key(key: str) -> None:
    if len(key.encode("utf-8")) < MIN_SERVICE_KEY_BYTES:
        raise ValueError(f"the internal token key must be at least {MIN_SERVICE_KEY_BYTES} bytes")


def _check_service_name(name: str, what: str) -> None:
    if not _SERVICE_NAME.fullmatch(name):
        raise ValueError(f"{what} must be a service name matching {_SERVICE_NAME.pattern}")
