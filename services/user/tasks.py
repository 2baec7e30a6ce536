"""The user domain's tasks: account deletion.

Deleting an account fans out over every Folio service that holds user data: each
registers the standard ``folio.purge.v1.PurgeService`` through the service kit and
declares its place in the order (``libs.service.purge_targets``). The auth service goes
first (its purge ends every session, so the user's tokens stop working), the task service
next to last, the user row last. A service that is down fails the attempt, which is
retried; every purge is idempotent. The task completes as an anonymous receipt.

The task reports no progress between starting and finishing: its owner is signed out by
the first purge, so the only way they see the outcome is a long poll already waiting, and
a progress change would end that poll early.
"""

import logging
import time
from typing import Any

import redis.asyncio as aioredis

from folio.purge.v1 import purge_service_pb2, purge_service_pb2_grpc
from libs.revocation import record_not_before
from libs.service import purge_targets
from libs.tasks import ACCOUNT_DELETION_KIND, TaskContext, task

log = logging.getLogger(__name__)


async def purge(ctx: TaskContext, service: str, user_id: str) -> int:
    """Call the service's PurgeUserData; returns how many rows it deleted."""
    stub = purge_service_pb2_grpc.PurgeServiceStub(ctx.channel(service))
    reply = await stub.PurgeUserData(purge_service_pb2.PurgeUserDataRequest(user_id=user_id))
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
        await record_not_before(client, user_id, not_before)
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
    purged: dict[str, int] = {}
    for service in purge_targets():
        purged[service.name] = await purge(ctx, service.name, user_id)
    await revoke_access_tokens(ctx, user_id)
    return {"purged": purged}
