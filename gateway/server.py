"""Composition root of the gateway: build the ASGI app and serve it with uvicorn."""

import uvicorn

from gateway.app import GatewayApp
from gateway.auth import EdgeAuth
from gateway.config import GatewaySettings, gateway_settings
from libs.commands import Command
from libs.config import Settings
from libs.logs import configure_logging
from libs.tokens import AccessTokenVerifier, JwksCache, jwks_fetcher_from_secrets


def create_app(
    settings: Settings | None = None, *, verifier: AccessTokenVerifier | None = None
) -> GatewayApp:
    """The gateway's ASGI app; upstream discovery starts with the ASGI lifespan."""
    config: GatewaySettings = gateway_settings(settings)
    if verifier is None:
        keys = JwksCache(jwks_fetcher_from_secrets(config), ttl=config.jwks_ttl_seconds)
        verifier = AccessTokenVerifier(
            keys,
            issuer=config.token_issuer,
            audience=config.token_audience,
            leeway=config.token_leeway_seconds,
        )
    auth = EdgeAuth(verifier, cache_seconds=config.gateway_token_cache_seconds)
    return GatewayApp(config, auth)


def uvicorn_config(app: GatewayApp, host: str, port: int) -> uvicorn.Config:
    """How the gateway is served: uvloop + httptools, our JSON logs, no server banner."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        # X-Forwarded-* from clients are not trusted; the gateway writes its own for upstreams.
        proxy_headers=False,
        timeout_graceful_shutdown=int(app.settings.grace_period_seconds),
    )


def run(settings: Settings | None = None) -> None:
    """Serve the gateway on ``settings.gateway_port`` until SIGTERM/SIGINT."""
    config = gateway_settings(settings)
    configure_logging("gateway", config.log_level)
    app = create_app(config)
    uvicorn.Server(uvicorn_config(app, config.bind_host, config.gateway_port)).run()


def _run_command(settings: Settings, _args: object) -> int:
    run(settings)
    return 0


COMMAND = Command(name="gateway", help="run the REST gateway", run=_run_command, dev_process=True)
