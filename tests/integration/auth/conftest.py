"""The auth and user services in-process, against the test database, Redis and issuer."""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from folio.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from folio.user.v1 import user_service_pb2_grpc
from libs.db import Database
from libs.devstack import migration_targets
from libs.migrations import migrate_all
from libs.secrets import Secrets, load_secrets
from libs.service import RunningService, start_service
from libs.tokens import sign_service_token
from services.auth.server import SERVICE as AUTH_SERVICE
from services.auth.settings import AuthSettings
from services.user.server import SERVICE as USER_SERVICE
from tests.fixtures.google_issuer import GoogleIssuer


@dataclass
class AuthEnv:
    """Both services on free ports, with stubs and what tests need to reach around them."""

    settings: AuthSettings
    secrets: Secrets
    database: Database
    auth_address: str
    user_address: str
    issuer: GoogleIssuer
    auth: "auth_service_pb2_grpc.AuthServiceAsyncStub"
    users: "user_service_pb2_grpc.UserServiceAsyncStub"
    server: RunningService
    auth_channel: grpc.aio.Channel

    async def sign_in(self, sub: str | None = None, email: str | None = None, **kw: Any) -> Any:
        """A SignInWithGoogle with a fresh ID token for ``sub``."""
        ip = kw.pop("ip", None)
        token = self.issuer.id_token(sub, email, **kw)
        return await self.auth.SignInWithGoogle(
            auth_service_pb2.SignInWithGoogleRequest(id_token=token), metadata=forwarded(ip)
        )

    def service_token(self, audience: str, caller: str = "task") -> str:
        return sign_service_token(self.secrets.internal_token_key, caller=caller, audience=audience)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def forwarded(ip: str | None) -> tuple[tuple[str, str], ...]:
    return (("x-forwarded-for", ip),) if ip else ()


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a Folio error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def auth_settings(
    tmp_path: Path, database_url: str, redis_url: str, issuer: GoogleIssuer, **overrides: Any
) -> AuthSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": database_url,
        "redis_url": redis_url,
        "google_client_ids": [issuer.client_id],
        "google_certs_url": issuer.certs_url,
        "google_token_url": issuer.token_url,
        "google_redirect_uris": [issuer.redirect_uri],
        **overrides,
    }
    return AuthSettings(**values)


AuthEnvFactory = Callable[..., Any]


@pytest.fixture
async def make_auth_env(
    database_url: str,
    redis_db_url: str,
    tmp_path: Path,
    google_issuer: GoogleIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[AuthEnvFactory]:
    """Builds the user and auth services with optional setting overrides."""
    # Dev secrets take third-party keys from the environment, as in production.
    monkeypatch.setenv("FOLIO_GOOGLE_CLIENT_SECRET", google_issuer.client_secret)
    migrate_all(database_url, migration_targets())
    cleanups: list[Callable[[], Any]] = []

    async def build(**overrides: Any) -> AuthEnv:
        settings = auth_settings(tmp_path, database_url, redis_db_url, google_issuer, **overrides)
        database = Database(database_url, pool_size=10)
        user_server = await start_service(
            USER_SERVICE, settings, address="127.0.0.1:0", database=database
        )
        user_port = user_server.port
        settings.user_addr = f"127.0.0.1:{user_port}"
        auth = await start_service(AUTH_SERVICE, settings, address="127.0.0.1:0", database=database)
        auth_port = auth.port
        auth_channel = grpc.aio.insecure_channel(f"127.0.0.1:{auth_port}")
        user_channel = grpc.aio.insecure_channel(f"127.0.0.1:{user_port}")

        async def cleanup() -> None:
            await auth_channel.close(None)
            await user_channel.close(None)
            await auth.stop()
            await user_server.stop()
            await database.dispose()

        cleanups.append(cleanup)
        return AuthEnv(
            settings=settings,
            secrets=load_secrets(settings),
            database=database,
            auth_address=f"127.0.0.1:{auth_port}",
            user_address=f"127.0.0.1:{user_port}",
            issuer=google_issuer,
            auth=auth_service_pb2_grpc.AuthServiceStub(auth_channel),
            users=user_service_pb2_grpc.UserServiceStub(user_channel),
            server=auth,
            auth_channel=auth_channel,
        )

    yield build
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def env(make_auth_env: AuthEnvFactory) -> AuthEnv:
    """The services with default settings."""
    built: AuthEnv = await make_auth_env()
    return built
