"""Gateway-only settings, on top of the ``FOLIO_*`` settings every process shares."""

from pydantic import Field

from libs.config import SERVICE_PORTS, Settings


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

    def upstream_address(self, name: str) -> str:
        """The ``host:port`` the gateway dials for upstream ``name``."""
        return self.gateway_upstream_addresses.get(name) or self.address(name)


def gateway_settings(settings: Settings | None = None) -> GatewaySettings:
    """``settings`` as GatewaySettings: its shared values, gateway knobs from the environment."""
    if isinstance(settings, GatewaySettings):
        return settings
    if settings is None:
        return GatewaySettings()
    return GatewaySettings(**settings.model_dump())
