"""The auth service's composition root."""

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis

from folio.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from folio.user.v1 import user_service_pb2_grpc
from libs.access import CachedRoles
from libs.config import Settings, get_settings
from libs.db import Database
from libs.grpc_client import service_channel
from libs.grpc_server import GrpcServer, Servicer, build_security
from libs.roles import user_service_roles
from services.auth import repository
from services.auth.google import GoogleSignIn
from services.auth.handlers import AuthDeps
from services.auth.keys import KeyRing
from services.auth.nonces import NonceRegistry
from services.auth.ratelimit import RateLimiter
from services.auth.servicer import AuthService

NAME = "auth"
PURGE_INTERVAL_SECONDS = 3600
log = logging.getLogger(__name__)


class AuthConfigError(Exception):
    """The auth service cannot start with these settings."""


def check_settings(settings: Settings) -> None:
    """Refuse settings under which the service would be unsafe or unable to work."""
    if not settings.redis_url:
        raise AuthConfigError("FOLIO_REDIS_URL is required (rate limits, nonces, sign-out)")
    published_before = settings.jwks_ttl_seconds + settings.signing_keys_reload_seconds
    if settings.signing_key_publish_delay_seconds < published_before:
        raise AuthConfigError(
            "FOLIO_SIGNING_KEY_PUBLISH_DELAY_SECONDS must be at least "
            "FOLIO_JWKS_TTL_SECONDS + FOLIO_SIGNING_KEYS_RELOAD_SECONDS, so verifiers "
            "know a new key before it signs"
        )
    if settings.refresh_idle_ttl_seconds <= 0 or settings.refresh_absolute_ttl_seconds <= 0:
        raise AuthConfigError("refresh token lifetimes must be positive")


@dataclass
class AuthServer:
    """The gRPC server and what it holds open."""

    server: GrpcServer
    deps: AuthDeps
    user_channel: grpc.aio.Channel
    redis: "aioredis.Redis"

    async def close(self) -> None:
        """Release clients; call after the gRPC server has stopped."""
        await self.deps.google.close()
        await self.deps.keys.close()
        await self.user_channel.close(None)
        await self.redis.aclose()


async def create_server(settings: Settings, database: Database) -> AuthServer:
    """The auth service with its dependencies, not yet bound or started."""
    check_settings(settings)
    assert settings.redis_url is not None
    google = GoogleSignIn(settings)
    keys = KeyRing(settings)
    secrets = await keys.load()
    security = build_security(settings)
    assert security.revocations is not None
    user_channel = service_channel(
        "user", caller=NAME, settings=settings, internal_token_key=secrets.internal_token_key
    )
    client = aioredis.Redis.from_url(settings.redis_url)
    deps = AuthDeps(
        settings=settings,
        keys=keys,
        google=google,
        users=user_service_pb2_grpc.UserServiceStub(user_channel),
        limiter=RateLimiter(client),
        nonces=NonceRegistry(client),
        revocations=security.revocations,
    )
    servicer = Servicer(
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
        AuthService(deps),
        auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    )
    server = GrpcServer(
        NAME,
        [servicer],
        security=security,
        roles=CachedRoles(user_service_roles(user_channel)),
        database=database,
        grace_period=settings.grace_period_seconds,
    )
    return AuthServer(server=server, deps=deps, user_channel=user_channel, redis=client)


async def purge_ended_sessions(database: Database, interval: float) -> None:
    """Delete long-ended sessions now and then, so the tables stay small."""
    while True:
        try:
            async with database.session() as session:
                purged = await repository.purge_ended_sessions(session)
            if purged:
                log.info("purged ended sessions", extra={"sessions": purged})
        except Exception:
            log.exception("purging ended sessions failed")
        await asyncio.sleep(interval)


async def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    if not settings.database_url:
        raise SystemExit("FOLIO_DATABASE_URL is required")
    database = Database(settings.database_url)
    try:
        server = await create_server(settings, database)
    except Exception as error:
        await database.dispose()
        raise SystemExit(f"auth service cannot start: {error}") from error
    server.server.bind(f"{settings.bind_host}:{settings.port(NAME)}")
    purge = asyncio.create_task(purge_ended_sessions(database, PURGE_INTERVAL_SECONDS))
    try:
        await server.server.serve_until_signalled()
    finally:
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
        await server.close()
        await database.dispose()


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
