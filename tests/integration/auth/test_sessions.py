"""Refresh rotation with reuse detection, expiry, sign-out, and session management."""

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text

from folio.auth.v1 import auth_service_pb2
from folio.purge.v1 import purge_service_pb2, purge_service_pb2_grpc
from folio.user.v1 import user_service_pb2
from tests.integration.auth.conftest import AuthEnv, AuthEnvFactory, bearer

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def refresh(env: AuthEnv, token: str) -> auth_service_pb2.RefreshTokenResponse:
    reply: auth_service_pb2.RefreshTokenResponse = await env.auth.RefreshToken(
        auth_service_pb2.RefreshTokenRequest(refresh_token=token)
    )
    return reply


async def refused(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def get_me(env: AuthEnv, access_token: str) -> user_service_pb2.GetMeResponse:
    reply: user_service_pb2.GetMeResponse = await env.users.GetMe(
        user_service_pb2.GetMeRequest(), metadata=bearer(access_token)
    )
    return reply


async def test_refresh_rotates_and_a_replayed_token_kills_the_session(
    make_auth_env: AuthEnvFactory,
) -> None:
    # Strict: no grace window, so the first reuse already counts as theft.
    env: AuthEnv = await make_auth_env(refresh_reuse_grace_seconds=0)
    signed_in = await env.sign_in()
    rotated = await refresh(env, signed_in.refresh_token)
    assert rotated.refresh_token != signed_in.refresh_token
    assert rotated.session_id == signed_in.session_id
    assert (await get_me(env, rotated.access_token)).user.id == signed_in.user.id

    assert await refused(refresh(env, signed_in.refresh_token)) == UNAUTHENTICATED
    # Reuse revoked the whole session: the newest refresh token and its access token too.
    assert await refused(refresh(env, rotated.refresh_token)) == UNAUTHENTICATED
    assert await refused(get_me(env, rotated.access_token)) == UNAUTHENTICATED
    async with env.database.session() as db:
        reason = await db.scalar(
            text("SELECT revoked_reason FROM auth.sessions WHERE id = :id"),
            {"id": signed_in.session_id},
        )
    assert reason == "refresh_token_reuse"


async def test_fifty_parallel_refreshes_of_one_token_yield_one_success(
    make_auth_env: AuthEnvFactory,
) -> None:
    # Limits above the burst, so every loser meets the rotation, not the rate limit.
    env: AuthEnv = await make_auth_env(
        rate_limit_refresh_per_ip=100,
        rate_limit_refresh_per_subject=100,
        refresh_reuse_grace_seconds=0,
    )
    signed_in = await env.sign_in()
    results = await asyncio.gather(
        *(refresh(env, signed_in.refresh_token) for _ in range(50)), return_exceptions=True
    )
    successes = [r for r in results if isinstance(r, auth_service_pb2.RefreshTokenResponse)]
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(successes) == 1
    assert len(failures) == 49
    assert {f.code() for f in failures} == {UNAUTHENTICATED}


async def test_concurrent_refreshes_within_the_grace_window_share_one_rotation(
    make_auth_env: AuthEnvFactory,
) -> None:
    """Tabs refreshing at once all get the one new pair; none of them looks like theft."""
    env: AuthEnv = await make_auth_env(
        rate_limit_refresh_per_ip=100,
        rate_limit_refresh_per_subject=100,
        refresh_reuse_grace_seconds=30,
    )
    signed_in = await env.sign_in()
    results = await asyncio.gather(*(refresh(env, signed_in.refresh_token) for _ in range(20)))
    assert len({(r.refresh_token, r.access_token) for r in results}) == 1
    assert results[0].refresh_token != signed_in.refresh_token
    # Redis holds the pair sealed: neither token can be read from it.
    assert env.settings.redis_url
    async with aioredis.Redis.from_url(env.settings.redis_url) as raw:
        kept = [await raw.get(key) async for key in raw.scan_iter("folio:auth:rotated:*")]
    assert len(kept) == 1 and isinstance(kept[0], bytes)
    assert results[0].refresh_token.encode() not in kept[0]
    assert results[0].access_token.encode() not in kept[0]
    assert (await get_me(env, results[0].access_token)).user.id == signed_in.user.id
    assert (await refresh(env, results[0].refresh_token)).refresh_token


async def test_a_reuse_within_the_window_gets_the_same_pair_and_after_it_revokes(
    make_auth_env: AuthEnvFactory,
) -> None:
    grace = 2.0
    env: AuthEnv = await make_auth_env(refresh_reuse_grace_seconds=grace)
    signed_in = await env.sign_in()
    first = await refresh(env, signed_in.refresh_token)
    rotated_at = asyncio.get_running_loop().time()
    await asyncio.sleep(0.1)  # the second tab, a moment later
    second = await refresh(env, signed_in.refresh_token)
    assert asyncio.get_running_loop().time() - rotated_at < grace
    assert (second.refresh_token, second.access_token) == (first.refresh_token, first.access_token)

    # The scenario is time passing: the window ends, and reuse is theft again.
    await asyncio.sleep(grace + 0.5 - (asyncio.get_running_loop().time() - rotated_at))
    assert await refused(refresh(env, signed_in.refresh_token)) == UNAUTHENTICATED
    assert await refused(refresh(env, first.refresh_token)) == UNAUTHENTICATED
    assert await refused(get_me(env, first.access_token)) == UNAUTHENTICATED


async def test_a_signed_out_session_gets_nothing_from_the_window(
    make_auth_env: AuthEnvFactory,
) -> None:
    env: AuthEnv = await make_auth_env(refresh_reuse_grace_seconds=30)
    signed_in = await env.sign_in()
    rotated = await refresh(env, signed_in.refresh_token)
    await env.auth.SignOut(auth_service_pb2.SignOutRequest(refresh_token=rotated.refresh_token))
    assert await refused(refresh(env, signed_in.refresh_token)) == UNAUTHENTICATED


async def test_unknown_tokens_are_refused_without_touching_sessions(env: AuthEnv) -> None:
    signed_in = await env.sign_in()
    for token in ("", "x" * 300, "made-up-token"):
        assert await refused(refresh(env, token)) == UNAUTHENTICATED
    assert (await refresh(env, signed_in.refresh_token)).refresh_token


@pytest.mark.parametrize("column", ["idle_expires_at", "expires_at"])
async def test_idle_and_absolute_expiry(env: AuthEnv, column: str) -> None:
    signed_in = await env.sign_in()
    async with env.database.session() as db:
        await db.execute(
            text(f"UPDATE auth.sessions SET {column} = now() - interval '1 second' WHERE id = :id"),
            {"id": signed_in.session_id},
        )
    assert await refused(refresh(env, signed_in.refresh_token)) == UNAUTHENTICATED


async def test_refresh_extends_idle_expiry_but_never_past_the_absolute_one(
    make_auth_env: AuthEnvFactory,
) -> None:
    env: AuthEnv = await make_auth_env(
        refresh_idle_ttl_seconds=3600, refresh_absolute_ttl_seconds=600
    )
    signed_in = await env.sign_in()
    await refresh(env, signed_in.refresh_token)
    async with env.database.session() as db:
        row = (
            await db.execute(
                text(
                    "SELECT idle_expires_at <= expires_at AS bounded,"
                    " expires_at - created_at AS lifetime FROM auth.sessions WHERE id = :id"
                ),
                {"id": signed_in.session_id},
            )
        ).one()
    assert row.bounded
    assert row.lifetime.total_seconds() == pytest.approx(600, abs=1)


async def test_sign_out_answers_ok_for_anything_and_ends_the_session(env: AuthEnv) -> None:
    for token in ("", "unknown-token", "y" * 1000):
        await env.auth.SignOut(auth_service_pb2.SignOutRequest(refresh_token=token))
    signed_in = await env.sign_in()
    assert (await get_me(env, signed_in.access_token)).user.id
    await env.auth.SignOut(auth_service_pb2.SignOutRequest(refresh_token=signed_in.refresh_token))
    assert await refused(refresh(env, signed_in.refresh_token)) == UNAUTHENTICATED
    # The access token of the signed-out session stops working too.
    assert await refused(get_me(env, signed_in.access_token)) == UNAUTHENTICATED
    # Signing out again is still fine.
    await env.auth.SignOut(auth_service_pb2.SignOutRequest(refresh_token=signed_in.refresh_token))


async def test_sign_out_everywhere_ends_every_session(env: AuthEnv) -> None:
    phone = await env.sign_in("everywhere-sub")
    laptop = await env.sign_in("everywhere-sub")
    other_user = await env.sign_in("someone-else")
    reply = await env.auth.SignOutEverywhere(
        auth_service_pb2.SignOutEverywhereRequest(), metadata=bearer(laptop.access_token)
    )
    assert reply.revoked_sessions == 2
    for session in (phone, laptop):
        assert await refused(refresh(env, session.refresh_token)) == UNAUTHENTICATED
        assert await refused(get_me(env, session.access_token)) == UNAUTHENTICATED
    assert (await get_me(env, other_user.access_token)).user.id == other_user.user.id
    # Signing in again afterwards works at once.
    again = await env.sign_in("everywhere-sub")
    assert (await get_me(env, again.access_token)).user.id == phone.user.id


async def test_sessions_are_listed_paged_and_revocable(env: AuthEnv) -> None:
    first = await env.sign_in("lister", ip="203.0.113.7")
    second = await env.sign_in("lister")
    third = await env.sign_in("lister")
    stranger = await env.sign_in("stranger")
    auth = bearer(third.access_token)

    page = await env.auth.ListSessions(auth_service_pb2.ListSessionsRequest(), metadata=auth)
    assert [s.id for s in page.sessions] == [third.session_id, second.session_id, first.session_id]
    assert [s.current for s in page.sessions] == [True, False, False]
    assert page.sessions[2].ip_address == "203.0.113.7"
    assert page.next_page_token == ""

    one = await env.auth.ListSessions(
        auth_service_pb2.ListSessionsRequest(page_size=2), metadata=auth
    )
    assert len(one.sessions) == 2
    rest = await env.auth.ListSessions(
        auth_service_pb2.ListSessionsRequest(page_size=2, page_token=one.next_page_token),
        metadata=auth,
    )
    assert [s.id for s in rest.sessions] == [first.session_id]
    assert rest.next_page_token == ""

    await env.auth.RevokeSession(
        auth_service_pb2.RevokeSessionRequest(session_id=first.session_id), metadata=auth
    )
    assert await refused(refresh(env, first.refresh_token)) == UNAUTHENTICATED
    assert await refused(get_me(env, first.access_token)) == UNAUTHENTICATED
    listed = await env.auth.ListSessions(auth_service_pb2.ListSessionsRequest(), metadata=auth)
    assert [s.id for s in listed.sessions] == [third.session_id, second.session_id]

    # Another user's session looks exactly like a missing one.
    for session_id in (stranger.session_id, "01HZZZZZZZZZZZZZZZZZZZZZZZ", "nope"):
        code = await refused(
            env.auth.RevokeSession(
                auth_service_pb2.RevokeSessionRequest(session_id=session_id), metadata=auth
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
    assert (await refresh(env, stranger.refresh_token)).refresh_token

    bad_token = await refused(
        env.auth.ListSessions(auth_service_pb2.ListSessionsRequest(page_token="!!"), metadata=auth)
    )
    assert bad_token == grpc.StatusCode.INVALID_ARGUMENT


async def test_session_methods_need_a_user(env: AuthEnv) -> None:
    for call in (
        env.auth.ListSessions(auth_service_pb2.ListSessionsRequest()),
        env.auth.SignOutEverywhere(auth_service_pb2.SignOutEverywhereRequest()),
    ):
        assert await refused(call) == UNAUTHENTICATED


async def test_purge_user_data_ends_and_deletes_every_session(env: AuthEnv) -> None:
    first = await env.sign_in("purged-sub")
    await env.sign_in("purged-sub")
    kept = await env.sign_in("kept-sub")
    request = purge_service_pb2.PurgeUserDataRequest(user_id=first.user.id)
    purges = purge_service_pb2_grpc.PurgeServiceStub(env.auth_channel)
    # INTERNAL: the user's own token is not enough.
    code = await refused(purges.PurgeUserData(request, metadata=bearer(first.access_token)))
    assert code == UNAUTHENTICATED
    internal = bearer(env.service_token("auth"))
    reply = await purges.PurgeUserData(request, metadata=internal)
    assert reply.deleted_count == 2
    assert await refused(get_me(env, first.access_token)) == UNAUTHENTICATED
    assert await refused(refresh(env, first.refresh_token)) == UNAUTHENTICATED
    async with env.database.session() as db:
        left = await db.scalar(
            text("SELECT count(*) FROM auth.sessions WHERE user_id = :uid"),
            {"uid": first.user.id},
        )
    assert left == 0
    assert (await purges.PurgeUserData(request, metadata=internal)).deleted_count == 0
    assert (await get_me(env, kept.access_token)).user.id == kept.user.id
