"""The access policy: levels read from the protos, and the PREMIUM/ADMIN/INTERNAL checks."""

import asyncio
from pathlib import Path
from typing import Any

import pytest

from libs import access
from libs.access import CachedRoles, Roles
from libs.config import Settings
from libs.errors import PermissionDenied, PremiumRequired, Unauthenticated
from libs.ids import new_id
from libs.interceptors.access import ON_BEHALF_OF_KEY, AccessPolicy
from libs.secrets import Secrets, load_secrets
from libs.tokens import AccessTokenVerifier, JwksCache, sign_access_token, sign_service_token


def test_levels_come_from_the_method_options() -> None:
    assert access.method_access("/folio.user.v1.UserService/GetMe") == access.USER
    assert access.method_access("/folio.user.v1.UserService/GetUser") == access.INTERNAL
    assert access.method_access("/grpc.health.v1.Health/Check") == access.PUBLIC
    assert (
        access.method_access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        == access.PUBLIC
    )


def test_unknown_methods_fail_closed() -> None:
    assert access.method_access("/folio.user.v1.UserService/NoSuchMethod") == access.INTERNAL
    assert access.method_access("/no.such.Service/Method") == access.INTERNAL


class _Call:
    """Just the part of a servicer context the access check reads."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.pairs = pairs

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.pairs


def Metadata(*pairs: tuple[str, str]) -> Any:
    return _Call(*pairs)


@pytest.fixture
def secrets(tmp_path: Path) -> Secrets:
    return load_secrets(Settings(data_dir=tmp_path))


@pytest.fixture
def interceptor(secrets: Secrets) -> AccessPolicy:
    async def fetch() -> dict[str, Any]:
        return secrets.public_jwks()

    verifier = AccessTokenVerifier(JwksCache(fetch), issuer="iss", audience="aud")
    roles = {
        "PLAIN": Roles(is_premium=False, is_admin=False),
        "PREMIUM": Roles(is_premium=True, is_admin=False),
        "ADMIN": Roles(is_premium=False, is_admin=True),
    }

    async def load(user_id: str) -> Roles | None:
        return roles.get(user_id)

    return AccessPolicy("user", verifier, secrets.internal_token_key, load)


def user_call(secrets: Secrets, user_id: str) -> Any:
    token = sign_access_token(
        secrets.active_key(), issuer="iss", audience="aud", user_id=user_id, session_id=new_id()
    )
    return Metadata(("authorization", f"Bearer {token}"))


@pytest.mark.parametrize(
    ("user_id", "level", "error"),
    [
        ("PLAIN", access.USER, None),
        ("PLAIN", access.PREMIUM, PremiumRequired),
        ("PREMIUM", access.PREMIUM, None),
        ("ADMIN", access.PREMIUM, None),
        ("PLAIN", access.ADMIN, PermissionDenied),
        ("PREMIUM", access.ADMIN, PermissionDenied),
        ("ADMIN", access.ADMIN, None),
        ("GONE", access.PREMIUM, Unauthenticated),
        ("PLAIN", access.INTERNAL, Unauthenticated),
    ],
)
async def test_user_levels(
    interceptor: AccessPolicy,
    secrets: Secrets,
    user_id: str,
    level: int,
    error: type[Exception] | None,
) -> None:
    call = user_call(secrets, user_id)
    if error is None:
        principal = await interceptor.authenticate(level, call)
        assert principal.user_id == user_id
    else:
        with pytest.raises(error):
            await interceptor.authenticate(level, call)


async def test_premium_refusal_carries_the_premium_reason(
    interceptor: AccessPolicy, secrets: Secrets
) -> None:
    with pytest.raises(PremiumRequired) as caught:
        await interceptor.authenticate(access.PREMIUM, user_call(secrets, "PLAIN"))
    assert caught.value.reason == "PREMIUM_REQUIRED"


async def test_service_tokens(interceptor: AccessPolicy, secrets: Secrets) -> None:
    token = sign_service_token(secrets.internal_token_key, caller="task", audience="user")
    bearer = ("authorization", f"Bearer {token}")
    internal = await interceptor.authenticate(access.INTERNAL, Metadata(bearer))
    assert internal.service == "task" and internal.user_id is None
    acting = await interceptor.authenticate(
        access.PREMIUM, Metadata(bearer, (ON_BEHALF_OF_KEY, "PREMIUM"))
    )
    assert acting.service == "task" and acting.user_id == "PREMIUM"
    with pytest.raises(Unauthenticated):
        await interceptor.authenticate(access.USER, Metadata(bearer))
    foreign = sign_service_token(secrets.internal_token_key, caller="task", audience="auth")
    with pytest.raises(Unauthenticated):
        await interceptor.authenticate(
            access.INTERNAL, Metadata(("authorization", f"Bearer {foreign}"))
        )


async def test_public_methods_admit_anyone(interceptor: AccessPolicy, secrets: Secrets) -> None:
    assert await interceptor.authenticate(access.PUBLIC, Metadata()) == access.ANONYMOUS
    broken = Metadata(("authorization", "Bearer nonsense"))
    assert await interceptor.authenticate(access.PUBLIC, broken) == access.ANONYMOUS
    known = await interceptor.authenticate(access.PUBLIC, user_call(secrets, "PLAIN"))
    assert known.user_id == "PLAIN"


async def test_cached_roles_see_a_change_after_the_ttl() -> None:
    current = {"u": Roles(is_premium=False, is_admin=False)}
    loads = []

    async def load(user_id: str) -> Roles | None:
        loads.append(user_id)
        return current.get(user_id)

    cached = CachedRoles(load, ttl=0.2)
    assert await cached("u") == Roles(is_premium=False, is_admin=False)
    current["u"] = Roles(is_premium=True, is_admin=False)
    assert (await cached("u")).is_premium is False  # type: ignore[union-attr]
    await asyncio.sleep(0.25)
    assert (await cached("u")).is_premium is True  # type: ignore[union-attr]
    assert loads == ["u", "u"]
