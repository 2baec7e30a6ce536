"""Google sign-in: ID tokens verified with google-auth, codes exchanged with PKCE.

Both Google endpoints are settings (certs URL, token URL), so tests use a local issuer.
"""

import asyncio
import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cachecontrol
import google.auth.exceptions
import google.auth.transport.requests
import httpx
import jwt
import requests
from google.oauth2 import id_token as google_id_token

from libs.errors import FailedPrecondition, InvalidArgument, Unauthenticated, Unavailable
from services.auth.settings import AuthSettings

logger = logging.getLogger(__name__)

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
# google-auth's default skew is 0, which fails tokens from a slightly fast clock.
CLOCK_SKEW_SECONDS = 10
MAX_TOKEN_BYTES = 8 * 1024
# RFC 7636 §4.1: 43-128 characters of [A-Z a-z 0-9 - . _ ~].
_CODE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_MAX_CODE_BYTES = 2048
# A client id Google would never issue; `folio dev` uses it so the auth service starts.
DEV_GOOGLE_CLIENT_ID = "folio-dev.apps.googleusercontent.com"


class GoogleConfigError(Exception):
    """Google sign-in is misconfigured; the auth service refuses to start."""


@dataclass(frozen=True)
class GoogleIdentity:
    """The verified claims of a Google ID token that Folio uses."""

    sub: str
    email: str
    name: str
    picture: str
    hosted_domain: str | None


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's transport with our timeout: its default waits two minutes."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        super().__init__(session=session)
        self._timeout = timeout

    def __call__(
        self,
        url: Any,
        method: Any = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        return super().__call__(  # type: ignore[no-untyped-call]
            url, method, body, headers, timeout or self._timeout, **kwargs
        )


class GoogleSignIn:
    """Verifies Google ID tokens and exchanges authorization codes."""

    def __init__(self, settings: AuthSettings, http: httpx.AsyncClient | None = None) -> None:
        if not settings.google_client_ids:
            raise GoogleConfigError(
                "FOLIO_GOOGLE_CLIENT_IDS is required: without an audience, google-auth "
                "accepts ID tokens issued to any client"
            )
        if settings.is_production and DEV_GOOGLE_CLIENT_ID in settings.google_client_ids:
            raise GoogleConfigError("production refuses the development Google client id")
        self.client_ids = list(settings.google_client_ids)
        self.certs_url = settings.google_certs_url
        self.token_url = settings.google_token_url
        self.hd_allowlist = frozenset(d.lower() for d in settings.google_hd_allowlist)
        self.redirect_uris = frozenset(settings.google_redirect_uris)
        # Certificates are cached as Google's Cache-Control says: one fetch, many sign-ins.
        self._request = _TimedRequest(
            cachecontrol.CacheControl(requests.Session()), settings.google_timeout_seconds
        )
        self._http = http or httpx.AsyncClient(timeout=settings.google_timeout_seconds)

    async def close(self) -> None:
        await self._http.aclose()
        await asyncio.to_thread(self._request.session.close)

    async def verify_id_token(self, token: str) -> tuple[GoogleIdentity, str | None]:
        """The identity of a valid ID token, and its nonce claim; UNAUTHENTICATED otherwise."""
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("invalid Google ID token", reason="INVALID_GOOGLE_TOKEN")
        try:
            # Google signs with RS256; anything else is refused before key lookup.
            if jwt.get_unverified_header(token).get("alg") != "RS256":
                raise ValueError("unexpected alg")
            claims: Mapping[str, Any] = await asyncio.to_thread(
                google_id_token.verify_token,
                token,
                self._request,
                audience=self.client_ids,
                certs_url=self.certs_url,
                clock_skew_in_seconds=CLOCK_SKEW_SECONDS,
            )
        except google.auth.exceptions.TransportError as error:
            logger.warning("cannot fetch Google certificates: %s", error)
            raise Unavailable("cannot reach Google to verify the sign-in") from error
        except (google.auth.exceptions.GoogleAuthError, jwt.PyJWTError, ValueError) as error:
            logger.info("Google ID token refused: %s", error)
            raise Unauthenticated(
                "invalid Google ID token", reason="INVALID_GOOGLE_TOKEN"
            ) from error
        return self._identity(claims), _optional_str(claims.get("nonce"))

    def _identity(self, claims: Mapping[str, Any]) -> GoogleIdentity:
        def refuse(why: str) -> Unauthenticated:
            logger.info("Google ID token refused: %s", why)
            return Unauthenticated(f"Google ID token refused: {why}", reason="INVALID_GOOGLE_TOKEN")

        # verify_token checks signature, exp/iat and aud, but not the issuer.
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise refuse("wrong issuer")
        sub, email = claims.get("sub"), claims.get("email")
        if not isinstance(sub, str) or not sub or not isinstance(email, str) or not email:
            raise refuse("no subject or e-mail")
        # Only a verified address is trusted; users are keyed on sub either way.
        if claims.get("email_verified") is not True:
            raise refuse("e-mail address not verified")
        hosted_domain = _optional_str(claims.get("hd"))
        if self.hd_allowlist and (hosted_domain or "").lower() not in self.hd_allowlist:
            raise refuse("account outside the allowed Workspace domains")
        return GoogleIdentity(
            sub=sub,
            email=email,
            name=_optional_str(claims.get("name")) or email.split("@")[0],
            picture=_optional_str(claims.get("picture")) or "",
            hosted_domain=hosted_domain,
        )

    async def exchange_code(
        self, code: str, code_verifier: str, redirect_uri: str, client_secret: str | None
    ) -> str:
        """Exchange an authorization code and its PKCE verifier for an ID token, once."""
        violations: dict[str, str] = {}
        if not code or len(code) > _MAX_CODE_BYTES:
            violations["code"] = "required"
        if not _CODE_VERIFIER.fullmatch(code_verifier):
            violations["code_verifier"] = "must be 43-128 characters of [A-Za-z0-9-._~]"
        if not redirect_uri:
            violations["redirect_uri"] = "required"
        if violations:
            raise InvalidArgument("invalid authorization code request", field_violations=violations)
        if not self.redirect_uris:
            raise FailedPrecondition(
                "sign-in with an authorization code is not configured",
                reason="CODE_FLOW_DISABLED",
            )
        if redirect_uri not in self.redirect_uris:
            raise InvalidArgument(
                "redirect_uri is not registered",
                field_violations={"redirect_uri": "must exactly match a registered URI"},
            )
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": code_verifier,
            "redirect_uri": redirect_uri,
            "client_id": self.client_ids[0],
        }
        if client_secret:
            form["client_secret"] = client_secret
        try:
            # Never retried: a code is single-use, and a retry would only burn it.
            response = await self._http.post(
                self.token_url, data=form, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as error:
            logger.warning("cannot reach Google's token endpoint: %s", error)
            raise Unavailable("cannot reach Google to complete the sign-in") from error
        if response.status_code >= 500:
            raise Unavailable("Google could not complete the sign-in")
        body = _json_object(response)
        if response.status_code != 200:
            logger.info(
                "authorization code refused: %s %s",
                response.status_code,
                body.get("error"),
            )
            raise Unauthenticated(
                "the authorization code was refused", reason="INVALID_AUTHORIZATION_CODE"
            )
        token = body.get("id_token")
        if not isinstance(token, str) or not token:
            raise Unauthenticated(
                "Google returned no ID token (was the openid scope requested?)",
                reason="INVALID_AUTHORIZATION_CODE",
            )
        return token


def nonce_matches(expected: str, actual: str | None) -> bool:
    """Constant-time comparison of the nonce the client sent with the token's."""
    return actual is not None and hmac.compare_digest(expected.encode(), actual.encode())


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
