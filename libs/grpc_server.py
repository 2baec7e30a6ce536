"""gRPC server bootstrap: interceptors, health per service, reflection, graceful SIGTERM drain."""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from libs.access import RoleLoader
from libs.config import Settings
from libs.db import Database
from libs.interceptors import AccessPolicy, ServerChain, check_output_only
from libs.revocation import Revocations, revocations_from_url
from libs.secrets import load_secrets
from libs.tokens import (
    AccessTokenVerifier,
    JwksCache,
    configure_default_verifier,
    jwks_fetcher_from_secrets,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Servicer:
    """A servicer with its generated ``add_..._to_server`` and its full service name."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    implementation: object
    full_name: str


@dataclass(frozen=True)
class Security:
    """What every server needs to authenticate callers."""

    verifier: AccessTokenVerifier
    keys: JwksCache
    internal_token_key: str
    # Signed-out sessions, when Redis is configured (FOLIO_REDIS_URL).
    revocations: Revocations | None = None


def build_security(settings: Settings) -> Security:
    """The access-token verifier (also behind ``decode_token``) and the internal token key."""
    secrets = load_secrets(settings)
    keys = JwksCache(jwks_fetcher_from_secrets(settings), ttl=settings.jwks_ttl_seconds)
    verifier = AccessTokenVerifier(
        keys,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        leeway=settings.token_leeway_seconds,
    )
    configure_default_verifier(verifier)
    revocations = revocations_from_url(settings.redis_url) if settings.redis_url else None
    if revocations is None:
        log.warning("FOLIO_REDIS_URL is not set: signed-out sessions keep working until expiry")
    return Security(
        verifier=verifier,
        keys=keys,
        internal_token_key=secrets.internal_token_key,
        revocations=revocations,
    )


class GrpcServer:
    """One Folio service process: its servicers behind the shared interceptors."""

    def __init__(
        self,
        name: str,
        servicers: Sequence[Servicer],
        *,
        security: Security,
        roles: RoleLoader,
        database: Database | None = None,
        grace_period: float = 10.0,
    ) -> None:
        self.name = name
        self.security = security
        self.grace_period = grace_period
        self.service_names = [s.full_name for s in servicers]
        policy = AccessPolicy(
            name, security.verifier, security.internal_token_key, roles, security.revocations
        )
        interceptors = [ServerChain(name, policy, [check_output_only], database)]
        self.server = grpc.aio.server(interceptors=interceptors)
        for servicer in servicers:
            servicer.add_to_server(servicer.implementation, self.server)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )

    def bind(self, address: str) -> int:
        """Listen on ``address`` (``host:0`` picks a free port); returns the port."""
        port = self.server.add_insecure_port(address)
        if port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        return port

    async def start(self) -> None:
        # Load the verification keys now, so even the sync decode_token works from the start.
        await self.security.keys.refresh()
        await self.server.start()
        for service in ["", *self.service_names]:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, then let in-flight RPCs finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_period if grace is None else grace)
        if self.security.revocations is not None:
            await self.security.revocations.close()
