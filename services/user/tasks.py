"""The user domain's tasks: account deletion.

Deleting an account fans out over every Folio service that holds user data: each
implements an idempotent INTERNAL ``folio.<svc>.v1.<Svc>Service/PurgeUserData`` whose
request carries the user id as field 1. The services are those of this deployment
(``services/<name>/server.py``); one that answers UNIMPLEMENTED holds no user data yet and
is skipped, one that is down fails the attempt, which is retried. The auth service goes
first (its purge ends every session, so the user's tokens stop working), the task service
next, the user row last. The task completes as an anonymous receipt.

The task reports no progress between starting and finishing: its owner is signed out by
the first purge, so the only way they see the outcome is a long poll already waiting, and
a progress change would end that poll early.
"""

import logging
import time
from typing import Any

import grpc
import redis.asyncio as aioredis

from folio.user.v1 import user_service_pb2
from libs.devstack import available_services
from libs.revocation import NOT_BEFORE_KEY, REVOCATION_TTL
from libs.tasks import ACCOUNT_DELETION_KIND, TaskContext, task

log = logging.getLogger(__name__)


def purge_order(services: list[str]) -> list[str]:
    """Auth first, the other domains next, then task, and the user row last."""
    ordered = [name for name in services if name not in ("auth", "task", "user")]
    head = ["auth"] if "auth" in services else []
    return head + ordered + [name for name in ("task", "user") if name in services]


def purge_method(service: str) -> str:
    return f"/folio.{service}.v1.{service.capitalize()}Service/PurgeUserData"


async def purge(ctx: TaskContext, service: str, user_id: str) -> int | None:
    """Call the service's PurgeUserData; None if it has none."""
    call = ctx.channel(service).unary_unary(
        purge_method(service),
        # Every service's request has the user id as field 1, so one message type fits all.
        request_serializer=user_service_pb2.PurgeUserDataRequest.SerializeToString,
        response_deserializer=user_service_pb2.PurgeUserDataResponse.FromString,
    )
    try:
        reply = await call(user_service_pb2.PurgeUserDataRequest(user_id=user_id))
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            ctx.log.info("%s has no PurgeUserData; nothing to purge there", service)
            return None
        raise
    ctx.log.info("%s purged %d rows", service, reply.deleted_count)
    return int(reply.deleted_count)


async def revoke_access_tokens(ctx: TaskContext, user_id: str) -> None:
    """Refuse every access token issued to the user so far, in every service.

    The auth service's purge does this too; this covers a token issued in the very second
    of that purge, and deployments without the auth service.
    """
    redis_url = ctx.settings.redis_url
    assert redis_url
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        # A Redis error fails the attempt (and it is retried): deletion must not end
        # with the user's tokens still accepted.
        # Tokens carry whole seconds: refuse those issued within the current one too.
        not_before = int(time.time()) + 1
        await client.set(NOT_BEFORE_KEY + user_id, str(not_before), ex=REVOCATION_TTL)
    finally:
        await client.aclose()


@task(ACCOUNT_DELETION_KIND, time_limit=120, detach_owner_on_success=True)
async def delete_account(ctx: TaskContext) -> dict[str, Any]:
    """Purge the user from every service, revoke their tokens, leave an anonymous receipt."""
    user_id = ctx.user_id
    if not user_id:
        raise ValueError("an account deletion needs the user it deletes")
    # Cancelling is honoured until the first purge; after that the deletion finishes,
    # since a half-deleted account is worse than either outcome.
    await ctx.checkpoint()
    services = purge_order(available_services())
    purged: dict[str, int] = {}
    for service in services:
        count = await purge(ctx, service, user_id)
        if count is not None:
            purged[service] = count
    await revoke_access_tokens(ctx, user_id)
    return {"purged": purged}
