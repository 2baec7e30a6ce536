"""Gateway-only settings, on top of the ``FOLIO_*`` settings every process shares."""

import re

from pydantic import Field, field_validator

from libs.config import SERVICE_PORTS, Settings, StringList, settings_as

# The origins a dev stack allows when none are configured: pages served from this machine.
DEV_CORS_ORIGIN_REGEX = r"http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?"


class GatewaySettings(Settings):
    """What the REST gateway reads from its environment (``FOLIO_GATEWAY_*``)."""

    # The services whose routes the gateway serves, by name; addresses come from
    # ``Settings.address`` unless ``gateway_upstream_addresses`` names one.
    gateway_upstreams: list[str] = Field(default_factory=lambda: list(SERVICE_PORTS))
    # name -> host:port, for upstreams outside SERVICE_PORTS or on other hosts.
    gateway_upstream_addresses: dict[str, str] = Field(default_factory=dict)
    # Above every limit a service declares for one request (a document's 1 MiB of content,
    # JSON-escaped), so those limits answer with their own field violations.
    gateway_max_body_bytes: int = 4 * 1024 * 1024
    gateway_max_json_depth: int = 32
    # Clients may ask for a shorter or longer deadline (seconds) with this header.
    gateway_deadline_header: str = "x-request-timeout"
    gateway_max_deadline_seconds: float = 300.0
    # Server streams (LLM output) outlive the unary default, so they get their own.
    gateway_stream_deadline_seconds: float = 300.0
    # An idle SSE stream sends a comment this often so proxies keep it open (0: never).
    gateway_sse_heartbeat_seconds: float = 15.0
    # A safety net: descriptors are re-read on every reconnect (an upstream that restarts
    # with new RPCs reconnects) and on UNIMPLEMENTED; the poll catches anything else.
    gateway_reflection_poll_seconds: float = 15.0
    # How long start-up waits for the first descriptors before serving anyway.
    gateway_startup_wait_seconds: float = 3.0
    gateway_health_timeout_seconds: float = 1.0
    # A verified access token is trusted for at most this long without re-verifying.
    gateway_token_cache_seconds: float = 30.0

    # CORS, for web apps served from other origins: exact origins ("*" for any) and/or a
    # regex an origin must match in full. With neither, dev allows pages on this machine
    # (DEV_CORS_ORIGIN_REGEX) and production allows none, so CORS stays off.
    gateway_cors_origins: StringList = Field(default_factory=list)
    gateway_cors_origin_regex: str | None = None
    gateway_cors_methods: StringList = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    )
    gateway_cors_headers: StringList = Field(
        default_factory=lambda: [
            "Authorization",
            "Content-Type",
            "If-Match",
            "If-None-Match",
            "X-Request-ID",
            "X-Request-Timeout",
        ]
    )
    # Response headers a page's script may read, besides the CORS-safelisted ones.
    gateway_cors_expose_headers: StringList = Field(
        default_factory=lambda: ["X-Request-ID", "Retry-After", "ETag", "Location"]
    )
    # How long a browser may reuse a preflight's answer (browsers cap it: Chromium at 2 h).
    gateway_cors_max_age_seconds: int = Field(default=600, ge=0)
    # gzip for responses of at least this many bytes, when the client accepts it; level 0
    # turns compression off. Level 6 costs a fraction of 9's CPU for nearly its ratio.
    gateway_gzip_min_bytes: int = Field(default=1024, ge=0)
    gateway_gzip_level: int = Field(default=6, ge=0, le=9)

    @field_validator("gateway_cors_origin_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        """A broken regex fails at start-up, not on the first browser request."""
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a regular expression: {error}") from None
        return value

    def cors_origin_regex(self) -> str | None:
        """The origin regex in force: the configured one, else dev's local pages, else none."""
        if self.gateway_cors_origin_regex:
            return self.gateway_cors_origin_regex
        if not self.gateway_cors_origins and not self.is_production:
            return DEV_CORS_ORIGIN_REGEX
        return None

    @property
    def cors_enabled(self) -> bool:
        """Whether any origin may call the API from a browser."""
        return bool(self.gateway_cors_origins) or self.cors_origin_regex() is not None

    def upstream_address(self, name: str) -> str:
        """The ``host:port`` the gateway dials for upstream ``name``."""
        return self.gateway_upstream_addresses.get(name) or self.address(name)


def gateway_settings(settings: Settings | None = None) -> GatewaySettings:
    """``settings`` as GatewaySettings: its shared values, gateway knobs from the environment."""
    return GatewaySettings() if settings is None else settings_as(GatewaySettings, settings)
