"""The LLM use cases: validate a prompt, hold its worst case against the budget, run it."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from libs.access import RoleLoader
from libs.errors import FolioError, InvalidArgument
from services.llm.providers import Call, Event, Finished, Prompt, Provider
from services.llm.quota import Budgets, PeriodUsage
from services.llm.settings import LlmSettings

log = logging.getLogger(__name__)
ROLES = ("user", "assistant")


@dataclass
class LlmDeps:
    """What the LLM use cases need."""

    settings: LlmSettings
    provider: Provider
    budgets: Budgets
    roles: RoleLoader


def _violation(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"invalid {field}: {problem}", field_violations={field: problem})


def prompt_of(
    settings: LlmSettings,
    *,
    messages: Sequence[tuple[str, str]],
    system: str,
    context: str,
    max_tokens: int,
    temperature: float | None,
    model: str,
) -> Prompt:
    """A validated prompt; each limit broken is a field violation."""
    if not messages:
        raise _violation("messages", "at least one message is required")
    if len(messages) > settings.llm_max_messages:
        raise _violation("messages", f"at most {settings.llm_max_messages} messages")
    for index, (role, content) in enumerate(messages):
        expected = ROLES[index % 2]
        if role != expected:
            raise _violation(f"messages[{index}].role", f"expected {expected!r} (turns alternate)")
        if not content.strip():
            raise _violation(f"messages[{index}].content", "must not be empty")
    if messages[-1][0] != "user":
        raise _violation("messages", "the last message must be the user's")
    texts = [system, context, *(content for _, content in messages)]
    if any("\x00" in text for text in texts):
        raise _violation("messages", "text must not contain U+0000")
    size = sum(len(text.encode()) for text in texts)
    if size > settings.llm_max_input_bytes:
        raise _violation("messages", f"at most {settings.llm_max_input_bytes} bytes of text")
    tokens = max_tokens or settings.llm_default_max_tokens
    if not 0 < tokens <= settings.llm_max_tokens_cap:
        raise _violation("max_tokens", f"1 to {settings.llm_max_tokens_cap}")
    if temperature is not None and not 0.0 <= temperature <= 1.0:
        raise _violation("temperature", "0 to 1")
    chosen = model or settings.llm_default_model
    if chosen not in settings.llm_models:
        raise _violation("model", "one of " + ", ".join(settings.llm_models))
    return Prompt(
        model=chosen,
        messages=list(messages),
        max_tokens=tokens,
        system=system,
        context=context,
        temperature=temperature,
    )


def worst_case(prompt: Prompt) -> int:
    """The most tokens a call can use: a token is never less than one byte of input."""
    texts = [prompt.system, prompt.context, *(content for _, content in prompt.messages)]
    return sum(len(text.encode()) for text in texts) + prompt.max_tokens


async def budget_of(deps: LlmDeps, user_id: str) -> int:
    roles = await deps.roles(user_id)
    settings = deps.settings
    if roles is not None and roles.is_admin:
        return settings.llm_budget_tokens_admin
    if roles is not None and roles.is_premium:
        return settings.llm_budget_tokens_premium
    return settings.llm_budget_tokens_user


async def run(
    deps: LlmDeps, user_id: str, prompt: Prompt, *, operation: str
) -> AsyncIterator[tuple[Event, Call]]:
    """The completion's events; usage is settled however the call ends."""
    reservation = await deps.budgets.reserve(
        user_id,
        budget=await budget_of(deps, user_id),
        tokens=worst_case(prompt),
        operation=operation,
        model=prompt.model,
    )
    call = Call()
    started = time.perf_counter()
    outcome, error, model = "error", "", prompt.model
    try:
        async for event in deps.provider.stream(prompt, call):
            if isinstance(event, Finished):
                outcome, model = "ok", event.model
            yield event, call
    except (asyncio.CancelledError, GeneratorExit):
        outcome = "cancelled"
        raise
    except FolioError as failure:
        error = failure.message
        raise
    finally:
        settling = deps.budgets.settle(
            reservation,
            call,
            model=model,
            outcome=outcome,
            latency_ms=int((time.perf_counter() - started) * 1000),
            error=error,
        )
        # Shielded: a cancelled call is still charged for what it used.
        await asyncio.shield(settling)
        log.info(
            "llm call %s: %s, %d tokens",
            reservation.call_id,
            outcome,
            call.tokens.total,
            extra={"operation": operation, "model": model, "request_id_upstream": call.request_id},
        )


async def usage(deps: LlmDeps, user_id: str) -> tuple[PeriodUsage, int]:
    return await deps.budgets.usage(user_id), await budget_of(deps, user_id)
