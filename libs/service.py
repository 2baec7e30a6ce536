"""The service kit: a service declares what it is, one runner starts, serves and stops it.

A service's ``server.py`` declares a :class:`Service` (its name, port, settings class,
migrations, and a ``build`` coroutine that returns its :class:`Parts`) and registers it
as a ``folio.services`` entry point in ``pyproject.toml``. The runner does the rest:
database, token verification, roles, the shared interceptors, health, reflection, the
standard user-data purge, background loops, bind, and the SIGTERM drain. ``folio serve``,
``folio dev``, the worker's account deletion and the tests all find services through
that registry, never by module names.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import redis.asyncio as aioredis
from google.protobuf.descriptor import ServiceDescriptor
from sqlalchemy.ext.asyncio import AsyncSession

from folio.purge.v1 import purge_service_pb2, purge_service_pb2_grpc
from libs.access import CachedRoles, RoleLoader
from libs.config import Settings, settings_as
from libs.db import Database, current_session
from libs.grpc_client import service_channel
from libs.grpc_server import GrpcServer, Security, Servicer, build_security
from libs.ids import require_ulid
from libs.roles import user_service_roles
from libs.statements import StatementPool

log = logging.getLogger(__name__)

SERVICES_GROUP = "folio.services"
SettingsT = TypeVar("SettingsT", bound=Settings)
# Deletes one user's data in the service's own schema; returns how many rows went.
PurgeHandler = Callable[[AsyncSession, str], Awaitable[int]]
Loop = Callable[[], Coroutine[Any, Any, None]]


class PurgeOrder:
    """When account deletion purges a service, lowest first."""

    # The auth service ends every session first, so the user's tokens stop working.
    FIRST = 0
    DEFAULT = 50
    # Tasks next to last: the running deletion's own task row survives until then.
    LATE = 90
    # The user row itself goes last.
    LAST = 100


def servicer(descriptor: ServiceDescriptor, add_to_server: Any, implementation: object) -> Servicer:
    """A servicer for the kit, named by its proto service descriptor."""
    return Servicer(add_to_server, implementation, descriptor.full_name)


@dataclass
class Parts:
    """What a service serves, built by its ``build`` once the runner has its resources."""

    servicers: Sequence[Servicer]
    # Roles for PREMIUM and ADMIN checks; by default read from the user service.
    roles: RoleLoader | None = None
    # Coroutines that run while the server serves and are cancelled when it stops.
    background: Sequence[Loop] = ()
    # Set when the service holds user data: account deletion then calls it.
    purge: PurgeHandler | None = None
    # Awaited after start-up, before the server reports SERVING (e.g. a listener is up).
    ready: Sequence[Callable[[], Awaitable[object]]] = ()


@dataclass
class Kit(Generic[SettingsT]):
    """What the runner hands a service's ``build``: settings and shared resources."""

    name: str
    settings: SettingsT
    database: Database
    security: Security
    closers: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def channel(self, callee: str) -> grpc.aio.Channel:
        """A channel to another Folio service, authenticated as this one; closed on stop."""
        channel = service_channel(
            callee,
            caller=self.name,
            settings=self.settings,
            internal_token_key=self.security.internal_token_key,
        )
        self.closers.push_async_callback(channel.close, None)
        return channel

    def statement_pool(self) -> StatementPool:
        """Connections for hot single statements on this service's database; closed on stop."""
        assert self.settings.database_url
        pool = StatementPool(self.settings.database_url)
        self.closers.push_async_callback(pool.close)
        return pool

    def redis(self) -> "aioredis.Redis":
        """A Redis client on ``FOLIO_REDIS_URL``; closed on stop."""
        if not self.settings.redis_url:
            raise ServiceConfigError(f"the {self.name} service needs FOLIO_REDIS_URL")
        client = aioredis.Redis.from_url(self.settings.redis_url)
        self.closers.push_async_callback(client.aclose)
        return client

    def on_close(self, close: Callable[[], Awaitable[object]]) -> None:
        """Run ``close`` when the service stops, after the server has drained."""
        self.closers.push_async_callback(close)


@dataclass(frozen=True)
class Service(Generic[SettingsT]):
    """A Folio gRPC service, as its ``server.py`` declares it."""

    name: str
    port: int
    settings: type[SettingsT]
    build: Callable[[Kit[SettingsT]], Awaitable[Parts]]
    # The PostgreSQL schema the service owns and the raw SQL files that build it.
    schema: str | None = None
    migrations: Path | None = None
    # Where this service stands in account deletion; None: it holds no user data.
    purge_order: int | None = None
    # Environment `folio dev` gives every process unless it is set already.
    dev_env: Mapping[str, str] = field(default_factory=dict)

    def load_settings(self, base: Settings | None = None) -> SettingsT:
        """This service's settings: from the environment, or ``base`` with its own fields."""
        return self.settings() if base is None else settings_as(self.settings, base)


class ServiceConfigError(Exception):
    """A service cannot start with these settings."""


class _PurgeService(purge_service_pb2_grpc.PurgeServiceServicer):
    """The standard ``folio.purge.v1.PurgeService`` over a service's purge handler."""

    def __init__(self, handler: PurgeHandler) -> None:
        self.handler = handler

    async def PurgeUserData(
        self,
        request: purge_service_pb2.PurgeUserDataRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> purge_service_pb2.PurgeUserDataResponse:
        user_id = require_ulid(request.user_id, "user_id")
        deleted = await self.handler(current_session(), user_id)
        return purge_service_pb2.PurgeUserDataResponse(deleted_count=deleted)


PURGE_SERVICE = purge_service_pb2.DESCRIPTOR.services_by_name["PurgeService"]


@dataclass
class RunningService:
    """A started service: its server, address and what closes with it."""

    service: Service[Any]
    settings: Settings
    server: GrpcServer
    port: int
    kit: Kit[Any]
    owns_database: bool
    _loops: list["asyncio.Task[None]"] = field(default_factory=list)

    @property
    def database(self) -> Database:
        return self.kit.database

    async def stop(self, grace: float | None = None) -> None:
        """Drain in-flight calls, stop the loops, close what the service opened."""
        await self.server.stop(grace)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await self.kit.closers.aclose()
        if self.owns_database:
            await self.kit.database.dispose()


async def start_service(
    service: Service[Any],
    settings: Settings | None = None,
    *,
    address: str | None = None,
    database: Database | None = None,
) -> RunningService:
    """Build, bind and start ``service``; ``address`` ``host:0`` picks a free port."""
    config = service.load_settings(settings)
    if not config.database_url:
        raise ServiceConfigError("FOLIO_DATABASE_URL is required")
    owns_database = database is None
    db = database or Database(config.database_url)
    kit = Kit(service.name, config, db, build_security(config))
    try:
        parts = await service.build(kit)
        if (parts.purge is None) != (service.purge_order is None):
            raise ServiceConfigError(f"{service.name}: purge_order and a purge handler go together")
        servicers = list(parts.servicers)
        if parts.purge is not None:
            servicers.append(
                servicer(
                    PURGE_SERVICE,
                    purge_service_pb2_grpc.add_PurgeServiceServicer_to_server,
                    _PurgeService(parts.purge),
                )
            )
        roles = parts.roles or user_service_roles(kit.channel("user"))
        server = GrpcServer(
            service.name,
            servicers,
            security=kit.security,
            roles=CachedRoles(roles),
            database=db,
            grace_period=config.grace_period_seconds,
        )
        port = server.bind(
            address or f"{config.bind_host}:{config.port(service.name, service.port)}"
        )
        running = RunningService(service, config, server, port, kit, owns_database)
        running._loops = [
            asyncio.create_task(loop(), name=f"{service.name}-{getattr(loop, '__name__', 'loop')}")
            for loop in parts.background
        ]
        for ready in parts.ready:
            await asyncio.wait_for(ready(), timeout=30)
        await server.start()
    except BaseException:
        await kit.closers.aclose()
        if owns_database:
            await db.dispose()
        raise
    return running


async def serve(service: Service[Any], settings: Settings | None = None) -> None:
    """Run ``service`` until SIGTERM or SIGINT, then drain and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        running = await start_service(service, settings)
    except ServiceConfigError as error:
        raise SystemExit(f"{service.name} service cannot start: {error}") from error
    log.info("serving %s", ", ".join(running.server.service_names))
    try:
        await stop.wait()
        log.info("stopping: draining in-flight calls for up to %.0f s", running.server.grace_period)
    finally:
        await running.stop()


def registered_services() -> dict[str, Service[Any]]:
    """Every service installed in this environment, by name, in port order."""
    found: dict[str, Service[Any]] = {}
    for entry in entry_points(group=SERVICES_GROUP):
        service = entry.load()
        if not isinstance(service, Service):
            raise TypeError(f"entry point {entry.name} is not a Service: {service!r}")
        found[service.name] = service
    return dict(sorted(found.items(), key=lambda item: item[1].port))


def purge_targets() -> list[Service[Any]]:
    """The services that hold user data, in the order account deletion purges them."""
    holding = [s for s in registered_services().values() if s.purge_order is not None]
    return sorted(holding, key=lambda s: (s.purge_order, s.name))
