"""User roles: ListUsers and UpdateUserRoles (ADMIN), and PREMIUM checks in another service."""

import asyncio
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import google.api
import grpc
import grpc_tools
import httpx
import pytest
from grpc_tools import protoc
from sqlalchemy import text

from folio.user.v1 import user_service_pb2
from libs.access import CachedRoles, current_user_id
from libs.grpc_client import service_channel
from libs.grpc_server import GrpcServer, Servicer, build_security
from libs.roles import user_service_roles
from tests.fixtures.processes import free_port
from tests.integration.auth.conftest import AuthEnv, bearer, forwarded

ROOT = Path(__file__).resolve().parents[3]
PROTOS = Path(__file__).resolve().parent / "protos"
SERVICE = "premiumtest.v1.PremiumTestService"


async def make_admin(env: AuthEnv, user_id: str) -> None:
    """Bootstrap an administrator, as an operator would (or `folio token mint --admin`)."""
    async with env.database.session() as db:
        await db.execute(
            text("UPDATE users.users SET is_admin = true WHERE id = :id"), {"id": user_id}
        )


async def test_only_admins_list_users_page_by_page(env: AuthEnv) -> None:
    admin = await env.sign_in("admin-sub", "admin@example.com")
    others = [await env.sign_in(f"member-{i}", f"member{i}@example.com") for i in range(3)]
    await make_admin(env, admin.user.id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.users.ListUsers(
            user_service_pb2.ListUsersRequest(), metadata=bearer(others[0].access_token)
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    seen: list[str] = []
    token = ""
    while True:
        page = await env.users.ListUsers(
            user_service_pb2.ListUsersRequest(page_size=3, page_token=token),
            metadata=bearer(admin.access_token),
        )
        assert len(page.users) <= 3
        seen += [user.id for user in page.users]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted([admin.user.id, *(o.user.id for o in others)])


async def test_update_user_roles_changes_only_the_given_flags(env: AuthEnv) -> None:
    admin = await env.sign_in("roles-admin")
    member = await env.sign_in("roles-member")
    await make_admin(env, admin.user.id)
    auth = bearer(admin.access_token)
    premium = await env.users.UpdateUserRoles(
        user_service_pb2.UpdateUserRolesRequest(user_id=member.user.id, is_premium=True),
        metadata=auth,
    )
    assert (premium.user.is_premium, premium.user.is_admin) == (True, False)
    promoted = await env.users.UpdateUserRoles(
        user_service_pb2.UpdateUserRolesRequest(user_id=member.user.id, is_admin=True),
        metadata=auth,
    )
    assert (promoted.user.is_premium, promoted.user.is_admin) == (True, True)

    for request, code in (
        (
            user_service_pb2.UpdateUserRolesRequest(user_id=admin.user.id, is_admin=False),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            user_service_pb2.UpdateUserRolesRequest(user_id="01HZZZZZZZZZZZZZZZZZZZZZZZ"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.users.UpdateUserRoles(request, metadata=auth)
        assert caught.value.code() == code

    outsider = await env.sign_in("roles-outsider")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.users.UpdateUserRoles(
            user_service_pb2.UpdateUserRolesRequest(user_id=outsider.user.id, is_admin=True),
            metadata=bearer(outsider.access_token),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def compile_premium_protos(out: Path) -> ModuleType:
    """Compile the test proto and import it (which registers its descriptors)."""
    includes = [
        PROTOS,
        ROOT / "protos",
        Path(grpc_tools.__file__).parent / "_proto",
        Path(google.api.__path__[0]).parent.parent,
    ]
    args = ["protoc", *(f"-I{d}" for d in includes), f"--python_out={out}"]
    if protoc.main([*args, "premiumtest/v1/premium.proto"]) != 0:
        raise RuntimeError("protoc failed")
    sys.path.insert(0, str(out))
    return importlib.import_module("premiumtest.v1.premium_pb2")


@pytest.fixture(scope="session")
def premium_pb(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return compile_premium_protos(tmp_path_factory.mktemp("premium-gen"))


@pytest.fixture
async def premium_service(env: AuthEnv, premium_pb: ModuleType) -> AsyncIterator[str]:
    """A service other than user with a PREMIUM method; roles come from UserService."""
    secrets = env.secrets
    channel = service_channel(
        "user",
        caller="premiumtest",
        settings=env.settings,
        internal_token_key=secrets.internal_token_key,
    )

    async def summon(_request: Any, _context: Any) -> Any:
        return premium_pb.SummonResponse(user_id=current_user_id())

    def add(_: object, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            summon,
            request_deserializer=premium_pb.SummonRequest.FromString,
            response_serializer=premium_pb.SummonResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Summon": handler}),)
        )

    server = GrpcServer(
        "premiumtest",
        [Servicer(add, None, SERVICE)],
        security=build_security(env.settings),
        roles=CachedRoles(user_service_roles(channel)),
    )
    port = server.bind("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop()
        await channel.close(None)


@pytest.fixture
async def gateway_url(env: AuthEnv, premium_service: str, tmp_path: Path) -> AsyncIterator[str]:
    """A real gateway process in front of the auth, user and premium test services."""
    port = free_port()
    upstreams = {"auth": env.auth_address, "user": env.user_address, "premium": premium_service}
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FOLIO_")}
    environment.update(
        {
            "FOLIO_DATA_DIR": str(env.settings.data_dir),
            "FOLIO_GATEWAY_PORT": str(port),
            "FOLIO_GATEWAY_UPSTREAMS": json.dumps(list(upstreams)),
            "FOLIO_GATEWAY_UPSTREAM_ADDRESSES": json.dumps(upstreams),
            "FOLIO_GATEWAY_REFLECTION_POLL_SECONDS": "0.5",
        }
    )
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "gateway.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        # Polled without blocking: the upstreams answer from this very event loop.
        async with httpx.AsyncClient(timeout=1) as http:
            for _ in range(120):
                try:
                    if (await http.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)
            else:
                raise TimeoutError((tmp_path / "gateway.log").read_text()[-2000:])
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)


async def test_premium_and_admin_checks_through_the_gateway(env: AuthEnv, gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:

        async def sign_in(sub: str) -> dict[str, Any]:
            response = await http.post(
                "/api/auth/google",
                json={"id_token": env.issuer.id_token(sub)},
                headers=dict(forwarded("192.0.2.50")),
            )
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        member = await sign_in("gw-member")
        admin = await sign_in("gw-admin")
        await make_admin(env, admin["user"]["id"])
        as_member = {"Authorization": f"Bearer {member['access_token']}"}
        as_admin = {"Authorization": f"Bearer {admin['access_token']}"}

        refused = await http.post("/api/premium-test/summon", json={}, headers=as_member)
        assert refused.status_code == 402
        assert refused.json()["error"]["details"][0]["reason"] == "PREMIUM_REQUIRED"
        forbidden = await http.get("/api/admin/users", headers=as_member)
        assert forbidden.status_code == 403

        listed = await http.get("/api/admin/users", headers=as_admin)
        assert listed.status_code == 200
        assert {u["id"] for u in listed.json()["users"]} >= {member["user"]["id"]}

        changed = await http.patch(
            f"/api/admin/users/{member['user']['id']}",
            json={"is_premium": True},
            headers=as_admin,
        )
        assert changed.status_code == 200
        assert changed.json()["is_premium"] is True
        changed_at = time.monotonic()
        while True:
            response = await http.post("/api/premium-test/summon", json={}, headers=as_member)
            if response.status_code == 200 or time.monotonic() - changed_at > 10:
                break
        passed_after = time.monotonic() - changed_at
        assert response.status_code == 200
        assert response.json()["user_id"] == member["user"]["id"]
        assert passed_after < 5  # DESIGN §4: a role change is seen within 5 s

        # And back: withdrawing premium is seen as quickly.
        await http.patch(
            f"/api/admin/users/{member['user']['id']}",
            json={"is_premium": False},
            headers=as_admin,
        )
        withdrawn_at = time.monotonic()
        while time.monotonic() - withdrawn_at < 10:
            response = await http.post("/api/premium-test/summon", json={}, headers=as_member)
            if response.status_code == 402:
                break
        assert response.status_code == 402
        assert time.monotonic() - withdrawn_at < 5
