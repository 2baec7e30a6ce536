"""The LLM service, as the service kit runs it."""

import asyncio
import logging
from functools import partial
from pathlib import Path

from folio.llm.v1 import llm_service_pb2, llm_service_pb2_grpc
from libs.access import CachedRoles
from libs.config import SERVICE_PORTS
from libs.roles import user_service_roles
from libs.secrets import load_secrets
from libs.service import Kit, Parts, PurgeOrder, Service, servicer
from services.llm.handlers import LlmDeps
from services.llm.providers import create_provider
from services.llm.quota import Budgets, purge_user
from services.llm.servicer import LlmService
from services.llm.settings import LlmSettings

LOST_CALL_SWEEP_SECONDS = 300
log = logging.getLogger(__name__)


async def build(kit: Kit[LlmSettings]) -> Parts:
    # Made here, in the serving process and its event loop, never before a fork.
    provider = create_provider(kit.settings, load_secrets(kit.settings).anthropic_api_key)
    kit.on_close(provider.close)
    roles = user_service_roles(kit.channel("user"))
    budgets = Budgets(kit.database, kit.statement_pool(), kit.settings.llm_quota_period)
    deps = LlmDeps(kit.settings, provider, budgets, CachedRoles(roles))
    return Parts(
        servicers=[
            servicer(
                llm_service_pb2.DESCRIPTOR.services_by_name["LlmService"],
                llm_service_pb2_grpc.add_LlmServiceServicer_to_server,
                LlmService(deps),
            )
        ],
        roles=roles,
        background=[partial(_release_lost_calls, budgets)],
        purge=purge_user,
    )


async def _release_lost_calls(budgets: Budgets) -> None:
    """Give back reservations of calls whose process died before settling them."""
    while True:
        try:
            released = await budgets.release_lost()
            if released:
                log.warning("released the reservations of %d lost calls", released)
        except Exception:
            log.exception("releasing lost calls failed")
        await asyncio.sleep(LOST_CALL_SWEEP_SECONDS)


SERVICE = Service(
    name="llm",
    port=SERVICE_PORTS["llm"],
    settings=LlmSettings,
    build=build,
    schema="llm",
    migrations=Path(__file__).parent / "migrations",
    purge_order=PurgeOrder.DEFAULT,
)
