"""The auth service, as the service kit runs it."""

import asyncio
import logging
from functools import partial
from pathlib import Path

from folio.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from folio.user.v1 import user_service_pb2_grpc
from libs.config import SERVICE_PORTS
from libs.db import Database
from libs.service import Kit, Parts, PurgeOrder, Service, servicer
from services.auth import repository
from services.auth.google import DEV_GOOGLE_CLIENT_ID, GoogleSignIn
from services.auth.handlers import AuthDeps, purge_user_data
from services.auth.keys import KeyRing
from services.auth.nonces import NonceRegistry
from services.auth.ratelimit import RateLimiter
from services.auth.rotations import RecentRotations
from services.auth.servicer import AuthService
from services.auth.settings import AuthSettings

PURGE_INTERVAL_SECONDS = 3600
log = logging.getLogger(__name__)


async def build(kit: Kit[AuthSettings]) -> Parts:
    google = GoogleSignIn(kit.settings)
    kit.on_close(google.close)
    keys = KeyRing(kit.settings)
    kit.on_close(keys.close)
    await keys.load()
    redis = kit.redis()
    assert kit.security.revocations is not None, "AuthSettings require Redis"
    deps = AuthDeps(
        settings=kit.settings,
        keys=keys,
        google=google,
        users=user_service_pb2_grpc.UserServiceStub(kit.channel("user")),
        limiter=RateLimiter(redis),
        nonces=NonceRegistry(redis),
        revocations=kit.security.revocations,
        rotations=RecentRotations(redis, kit.settings.refresh_reuse_grace_seconds),
    )

    return Parts(
        servicers=[
            servicer(
                auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
                auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
                AuthService(deps),
            )
        ],
        background=[partial(purge_ended_sessions, kit.database, PURGE_INTERVAL_SECONDS)],
        purge=partial(purge_user_data, deps),
    )


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


SERVICE = Service(
    name="auth",
    port=SERVICE_PORTS["auth"],
    settings=AuthSettings,
    build=build,
    schema="auth",
    migrations=Path(__file__).parent / "migrations",
    purge_order=PurgeOrder.FIRST,
    # `folio dev` signs in with `folio token mint`; Google sign-in needs a real client id.
    dev_env={"FOLIO_GOOGLE_CLIENT_IDS": DEV_GOOGLE_CLIENT_ID},
)
