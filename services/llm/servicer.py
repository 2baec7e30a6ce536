"""LlmService: proto <-> domain translation only."""

from collections.abc import AsyncIterator
from typing import Any

import grpc

from folio.llm.v1 import llm_pb2, llm_service_pb2, llm_service_pb2_grpc
from libs.access import current_principal, current_user_id
from libs.convert import timestamp
from libs.interceptors.request_context import metadata_value
from services.llm import handlers
from services.llm.handlers import LlmDeps
from services.llm.providers import Finished, Prompt, TextDelta, Tokens

Context = grpc.aio.ServicerContext[Any, Any]
# Set by a Folio service calling on a user's behalf, e.g. "document.rewrite".
OPERATION_KEY = "x-folio-operation"


def usage_to_proto(tokens: Tokens) -> llm_pb2.Usage:
    return llm_pb2.Usage(
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cache_read_input_tokens=tokens.cache_read,
        cache_creation_input_tokens=tokens.cache_write,
    )


def _prompt(
    deps: LlmDeps,
    request: llm_service_pb2.CompleteRequest | llm_service_pb2.StreamCompleteRequest,
) -> Prompt:
    return handlers.prompt_of(
        deps.settings,
        messages=[(m.role, m.content) for m in request.messages],
        system=request.system,
        context=request.context,
        max_tokens=request.max_tokens,
        temperature=request.temperature if request.HasField("temperature") else None,
        model=request.model,
    )


def _operation(context: Context, default: str) -> str:
    caller = current_principal().service
    if caller is None:
        return default
    return metadata_value(context, OPERATION_KEY) or f"{caller}:{default}"


class LlmService(llm_service_pb2_grpc.LlmServiceServicer):
    def __init__(self, deps: LlmDeps) -> None:
        self.deps = deps

    async def Complete(
        self, request: llm_service_pb2.CompleteRequest, context: Context
    ) -> llm_service_pb2.CompleteResponse:
        prompt = _prompt(self.deps, request)
        parts: list[str] = []
        reply = llm_service_pb2.CompleteResponse(model=prompt.model)
        async for event, call in handlers.run(
            self.deps, current_user_id(), prompt, operation=_operation(context, "complete")
        ):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                reply.stop_reason, reply.model = event.stop_reason, event.model
                reply.usage.CopyFrom(usage_to_proto(call.tokens))
        reply.text = "".join(parts)
        return reply

    async def StreamComplete(
        self, request: llm_service_pb2.StreamCompleteRequest, context: Context
    ) -> AsyncIterator[llm_service_pb2.StreamCompleteResponse]:
        prompt = _prompt(self.deps, request)
        async for event, call in handlers.run(
            self.deps, current_user_id(), prompt, operation=_operation(context, "stream")
        ):
            if isinstance(event, TextDelta):
                yield llm_service_pb2.StreamCompleteResponse(
                    delta=llm_service_pb2.Delta(text=event.text)
                )
            else:
                yield llm_service_pb2.StreamCompleteResponse(
                    done=llm_service_pb2.Done(
                        stop_reason=event.stop_reason,
                        usage=usage_to_proto(call.tokens),
                        model=event.model,
                    )
                )

    async def GetUsage(
        self, request: llm_service_pb2.GetUsageRequest, context: Context
    ) -> llm_service_pb2.GetUsageResponse:
        period, budget = await handlers.usage(self.deps, current_user_id())
        return llm_service_pb2.GetUsageResponse(
            usage=usage_to_proto(period.tokens),
            used_tokens=period.used,
            budget_tokens=budget,
            remaining_tokens=max(0, budget - period.used),
            period_start=timestamp(period.period_start),
            resets_at=timestamp(period.resets_at),
        )
