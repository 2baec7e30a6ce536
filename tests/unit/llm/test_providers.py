"""Choosing the model provider, the offline stand-in, and mapping upstream failures."""

import anthropic
import grpc
import httpx2 as httpx
import pytest
from pydantic import ValidationError

from libs.service import ServiceConfigError
from services.llm.handlers import prompt_of, worst_case
from services.llm.providers import (
    AnthropicProvider,
    Call,
    Finished,
    OfflineProvider,
    Prompt,
    TextDelta,
    create_provider,
    translate,
)
from services.llm.quota import period_of
from services.llm.settings import LlmSettings


def test_production_refuses_the_offline_model() -> None:
    with pytest.raises(ServiceConfigError, match="ANTHROPIC_API_KEY"):
        create_provider(LlmSettings(env="production"), None)
    with pytest.raises(ValidationError, match="offline"):
        LlmSettings(env="production", llm_provider="offline")
    assert isinstance(create_provider(LlmSettings(), None), OfflineProvider)
    assert isinstance(create_provider(LlmSettings(), "sk-test"), AnthropicProvider)


async def test_the_offline_model_streams_deterministically_and_names_itself() -> None:
    prompt = Prompt(
        model="claude-sonnet-4-5", messages=[("user", "tell me about owls")], max_tokens=50
    )
    runs = []
    for _ in range(2):
        call = Call()
        events = [event async for event in OfflineProvider().stream(prompt, call)]
        runs.append(events)
        texts = [e.text for e in events if isinstance(e, TextDelta)]
        assert len(texts) > 3 and "owls" in "".join(texts)
        assert events[-1] == Finished("end_turn", "offline")
        assert call.tokens.output == len(texts)
    assert runs[0] == runs[1]


def _status_error(status: int, headers: dict[str, str] | None = None) -> anthropic.APIStatusError:
    request = httpx.Request("POST", "http://upstream/v1/messages")
    response = httpx.Response(status, headers=headers or {}, request=request)
    classes = {
        400: anthropic.BadRequestError,
        401: anthropic.AuthenticationError,
        429: anthropic.RateLimitError,
        529: anthropic.InternalServerError,
    }
    return classes[status]("failed", response=response, body=None)


def test_upstream_failures_become_folio_errors() -> None:
    limited = translate(_status_error(429, {"retry-after": "7"}))
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.metadata["retry_after"] == "7"
    overloaded = translate(_status_error(529))
    assert overloaded.code == grpc.StatusCode.UNAVAILABLE and "retry_after" in overloaded.metadata
    assert translate(_status_error(400)).code == grpc.StatusCode.INVALID_ARGUMENT
    refused_key = translate(_status_error(401))
    assert refused_key.code == grpc.StatusCode.INTERNAL and "key" not in refused_key.message
    timeout = translate(anthropic.APITimeoutError(httpx.Request("POST", "http://upstream")))
    assert timeout.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_prompts_are_validated_and_their_worst_case_bounds_the_call() -> None:
    settings = LlmSettings()
    prompt = prompt_of(
        settings,
        messages=[("user", "héllo")],
        system="be brief",
        context="",
        max_tokens=0,
        temperature=None,
        model="",
    )
    assert prompt.max_tokens == settings.llm_default_max_tokens
    assert prompt.model == settings.llm_default_model
    assert worst_case(prompt) == len("héllo".encode()) + len(b"be brief") + prompt.max_tokens


def test_budget_periods_are_calendar_months_or_days() -> None:
    import datetime as dt

    moment = dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC)
    assert period_of(moment, "month") == (
        dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
    )
    assert period_of(moment, "day")[1] == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
