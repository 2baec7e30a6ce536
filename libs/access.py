"""Who is calling: the access level of each RPC and the principal of the current call."""

import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache

from google.protobuf import descriptor_pool

from folio.api.v1 import annotations_pb2
from libs.errors import Unauthenticated

PUBLIC = annotations_pb2.ACCESS_PUBLIC
USER = annotations_pb2.ACCESS_USER
PREMIUM = annotations_pb2.ACCESS_PREMIUM
ADMIN = annotations_pb2.ACCESS_ADMIN
INTERNAL = annotations_pb2.ACCESS_INTERNAL

# Standard services every Folio server exposes to anyone (operators, probes, grpcurl).
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


@lru_cache(maxsize=1024)
def method_access(full_method: str) -> int:
    """The access level declared on ``/package.Service/Method``; INTERNAL when undeclared."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    if service in OPEN_SERVICES:
        return PUBLIC
    try:
        descriptor = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        return INTERNAL
    method_descriptor = descriptor.methods_by_name.get(method)
    if method_descriptor is None:
        return INTERNAL
    level: int = method_descriptor.GetOptions().Extensions[annotations_pb2.access]
    return level or INTERNAL


@dataclass(frozen=True)
class Principal:
    """The caller of the current RPC: a user, a service (maybe acting for a user), or nobody."""

    user_id: str | None = None
    session_id: str | None = None
    service: str | None = None


ANONYMOUS = Principal()
principal_var: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    return principal_var.get()


def current_user_id() -> str:
    """The id of the user the current RPC acts for; UNAUTHENTICATED if there is none."""
    user_id = principal_var.get().user_id
    if user_id is None:
        raise Unauthenticated("this method needs a signed-in user")
    return user_id


@dataclass(frozen=True)
class Roles:
    """A user's current flags, as the PREMIUM and ADMIN checks read them."""

    is_premium: bool
    is_admin: bool


RoleLoader = Callable[[str], Awaitable[Roles | None]]


class CachedRoles:
    """Caches a user's roles for a few seconds (DESIGN §4: at most 5 s stale)."""

    def __init__(self, load: RoleLoader, ttl: float = 3.0, max_entries: int = 10_000) -> None:
        self._load = load
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Roles | None]] = {}

    async def __call__(self, user_id: str) -> Roles | None:
        now = time.monotonic()
        hit = self._entries.get(user_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        roles = await self._load(user_id)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[user_id] = (now + self._ttl, roles)
        return roles
