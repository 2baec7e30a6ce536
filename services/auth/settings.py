"""The auth service's own settings, on top of those every Folio process shares."""

from typing import Self

from pydantic import model_validator

from libs.config import Settings, StringList


class SigningSettings(Settings):
    """How access-token signing keys are rotated (the auth service and `folio keys`)."""

    # A new signing key is published this long before it signs; it must exceed every
    # verifier's JWKS cache TTL plus the auth service's key reload interval.
    signing_key_publish_delay_seconds: int = 600
    signing_keys_reload_seconds: float = 10.0

    @model_validator(mode="after")
    def _published_before_it_signs(self) -> Self:
        published_before = self.jwks_ttl_seconds + self.signing_keys_reload_seconds
        if self.signing_key_publish_delay_seconds < published_before:
            raise ValueError(
                "FOLIO_SIGNING_KEY_PUBLISH_DELAY_SECONDS must be at least "
                "FOLIO_JWKS_TTL_SECONDS + FOLIO_SIGNING_KEYS_RELOAD_SECONDS, so verifiers "
                "know a new key before it signs"
            )
        return self


# A longer window would let a stolen refresh token be used unnoticed for that long.
MAX_REUSE_GRACE_SECONDS = 60


class AuthSettings(SigningSettings):
    """What the auth service reads from its environment, validated when it starts."""

    # Google sign-in. The certs URL must serve Google's v1 format ({kid: x509 PEM});
    # tests point both URLs at a local issuer.
    google_client_ids: StringList = []
    google_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_hd_allowlist: StringList = []
    # Exact redirect URIs the code flow accepts; the code flow is off while empty.
    google_redirect_uris: StringList = []
    google_timeout_seconds: float = 10.0

    # Sessions: a refresh token dies after idle_ttl unused, a session after absolute_ttl.
    refresh_idle_ttl_seconds: int = 14 * 24 * 3600
    refresh_absolute_ttl_seconds: int = 30 * 24 * 3600
    # A refresh token presented again this soon after it was rotated (two tabs refreshing
    # at once) gets the pair that rotation issued; later, reuse revokes the session.
    # 0 turns the window off: every reuse revokes.
    refresh_reuse_grace_seconds: float = 5.0

    # Sign-in and refresh attempts per client IP and per subject, per window.
    rate_limit_window_seconds: int = 60
    rate_limit_signin_per_ip: int = 20
    rate_limit_signin_per_subject: int = 10
    rate_limit_refresh_per_ip: int = 60
    rate_limit_refresh_per_subject: int = 30
    # Proxies in front of the gateway that append to X-Forwarded-For; the client
    # address is the entry this many places left of the one the gateway appended.
    trusted_proxy_hops: int = 0

    @model_validator(mode="after")
    def _safe_to_run(self) -> Self:
        """Refuse settings under which the service would be unsafe or unable to work."""
        if not self.google_client_ids:
            raise ValueError(
                "FOLIO_GOOGLE_CLIENT_IDS is required: without an audience, google-auth "
                "accepts ID tokens issued to any client"
            )
        if not self.redis_url:
            raise ValueError("FOLIO_REDIS_URL is required (rate limits, nonces, sign-out)")
        if self.refresh_idle_ttl_seconds <= 0 or self.refresh_absolute_ttl_seconds <= 0:
            raise ValueError("refresh token lifetimes must be positive")
        if not 0 <= self.refresh_reuse_grace_seconds <= MAX_REUSE_GRACE_SECONDS:
            raise ValueError(
                f"FOLIO_REFRESH_REUSE_GRACE_SECONDS must be within 0..{MAX_REUSE_GRACE_SECONDS}"
            )
        return self
