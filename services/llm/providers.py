"""Models behind one interface: Anthropic through its official SDK, and an offline stand-in.

A provider streams a completion as :class:`TextDelta` events and one :class:`Finished`.
Every upstream failure leaves as a Folio error: a rate limit is 429 with Retry-After, an
overloaded or unreachable upstream 503, a timeout 504, a refused request 400, and a
refused API key 500 with a clear log line (never the key).
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anthropic
import grpc

from libs.errors import FolioError, InvalidArgument, ResourceExhausted, Unavailable
from libs.service import ServiceConfigError
from services.llm.settings import LlmSettings

log = logging.getLogger(__name__)
OFFLINE_MODEL = "offline"
# Retry-After when the upstream did not say.
_DEFAULT_RETRY_AFTER = 5


@dataclass(frozen=True)
class Prompt:
    """What a completion is asked: the model's inputs, already validated."""

    model: str
    messages: Sequence[tuple[str, str]]
    max_tokens: int
    system: str = ""
    # Sent before ``system`` as a cached block (Anthropic prompt caching).
    context: str = ""
    temperature: float | None = None


@dataclass
class Tokens:
    """Tokens by kind, as the upstream counts them."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_write


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    stop_reason: str
    model: str


@dataclass
class Call:
    """What one call has produced so far: filled in as events arrive, read when it ends."""

    tokens: Tokens = field(default_factory=Tokens)
    request_id: str = ""
    text_sent: bool = False
    # Text events relayed: the output tokens of an answer cut short are at least these,
    # when the upstream had not reported its count yet.
    deltas: int = 0


Event = TextDelta | Finished


class Provider(Protocol):
    name: str

    def stream(self, prompt: Prompt, call: Call) -> AsyncIterator[Event]:
        """The completion as it is written; ``call`` is kept current with usage."""
        ...

    async def close(self) -> None: ...


class UpstreamTimeout(FolioError):
    """The model did not answer in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "UPSTREAM_TIMEOUT"


class UpstreamMisconfigured(FolioError):
    """The upstream refused Folio's credentials: an operator must act."""

    reason = "UPSTREAM_MISCONFIGURED"


# --------------------------------------------------------------------------- offline


class OfflineProvider:
    """A deterministic stand-in for development: it says what it is, and streams in words."""

    name = OFFLINE_MODEL

    async def close(self) -> None:
        return None

    async def stream(self, prompt: Prompt, call: Call) -> AsyncIterator[Event]:
        last = prompt.messages[-1][1] if prompt.messages else ""
        words = f"(offline model) You said: {' '.join(last.split()[:60])}".split(" ")
        budget = prompt.max_tokens
        call.tokens.input = len(" ".join(text for _, text in prompt.messages).split()) + len(
            prompt.system.split()
        )
        call.tokens.cache_read = len(prompt.context.split())
        for index, word in enumerate(words[:budget]):
            call.tokens.output += 1
            call.deltas += 1
            call.text_sent = True
            yield TextDelta(word if index == 0 else " " + word)
            await asyncio.sleep(0)
        yield Finished("max_tokens" if len(words) > budget else "end_turn", OFFLINE_MODEL)


# --------------------------------------------------------------------------- Anthropic


def _retry_after(error: anthropic.APIStatusError) -> int:
    value = error.response.headers.get("retry-after", "")
    try:
        return max(1, int(float(value)))
    except ValueError:
        return _DEFAULT_RETRY_AFTER


def translate(error: Exception) -> FolioError:
    """The Folio error for an upstream failure."""
    if isinstance(error, anthropic.APITimeoutError):
        return UpstreamTimeout("the model did not answer in time")
    if isinstance(error, anthropic.APIConnectionError):
        return Unavailable("the model cannot be reached now; try again", reason="UPSTREAM_DOWN")
    if isinstance(error, anthropic.RateLimitError):
        return ResourceExhausted(
            "the model is rate limited; try again later",
            retry_after=_retry_after(error),
            reason="UPSTREAM_RATE_LIMITED",
        )
    if isinstance(error, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        log.error(
            "the model provider refused Folio's API key (%s); check ANTHROPIC_API_KEY",
            error.status_code,
        )
        return UpstreamMisconfigured("the model is not available")
    if isinstance(error, anthropic.BadRequestError):
        return InvalidArgument(f"the model refused the request: {error.message}")
    if isinstance(error, anthropic.APIStatusError):
        # 529 overloaded and 5xx: the upstream's trouble, worth a retry later.
        unavailable = Unavailable(
            "the model is overloaded; try again", reason="UPSTREAM_OVERLOADED"
        )
        unavailable.metadata["retry_after"] = str(_retry_after(error))
        return unavailable
    return Unavailable("the model failed; try again", reason="UPSTREAM_ERROR")


def _overloaded(error: Exception) -> bool:
    """A mid-stream ``overloaded_error`` event, which the SDK raises as an APIStatusError."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body)
        return isinstance(detail, dict) and detail.get("type") == "overloaded_error"
    return False


class AnthropicProvider:
    """Claude through the official SDK: one async client per process and event loop."""

    name = "anthropic"

    def __init__(self, settings: LlmSettings, api_key: str) -> None:
        self.settings = settings
        self.client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=settings.anthropic_base_url,
            # The SDK retries a request that failed before any answer (connection errors,
            # 408/409/429/5xx/529, honouring retry-after); never once tokens flowed.
            max_retries=settings.llm_max_retries,
            timeout=anthropic.Timeout(
                settings.llm_read_timeout_seconds, connect=settings.llm_connect_timeout_seconds
            ),
        )

    async def close(self) -> None:
        await self.client.close()

    def _arguments(self, prompt: Prompt) -> dict[str, object]:
        system: list[dict[str, object]] = []
        if prompt.context:
            system.append(
                {"type": "text", "text": prompt.context, "cache_control": {"type": "ephemeral"}}
            )
        if prompt.system:
            system.append({"type": "text", "text": prompt.system})
        arguments: dict[str, object] = {
            "model": prompt.model,
            "max_tokens": prompt.max_tokens,
            "messages": [{"role": role, "content": text} for role, text in prompt.messages],
        }
        if system:
            arguments["system"] = system
        if prompt.temperature is not None:
            arguments["temperature"] = prompt.temperature
        return arguments

    async def stream(self, prompt: Prompt, call: Call) -> AsyncIterator[Event]:
        # An overloaded error that arrives mid-stream before any text is a fault of the
        # request as a whole: it is tried again like one that failed to start.
        attempts = self.settings.llm_max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async for event in self._stream_once(prompt, call):
                    yield event
                return
            except anthropic.APIStatusError as error:
                if _overloaded(error) and not call.text_sent and attempt < attempts:
                    log.warning("the model was overloaded before answering; trying again")
                    await asyncio.sleep(min(2.0**attempt, 8.0) / 4)
                    continue
                raise translate(error) from error
            except anthropic.APIError as error:
                raise translate(error) from error

    async def _stream_once(self, prompt: Prompt, call: Call) -> AsyncIterator[Event]:
        async with self.client.messages.stream(**self._arguments(prompt)) as stream:  # type: ignore[arg-type]
            call.request_id = stream.response.headers.get("request-id", "")
            async for event in stream:
                if event.type == "message_start":
                    usage = event.message.usage
                    call.tokens.input = usage.input_tokens
                    call.tokens.cache_read = usage.cache_read_input_tokens or 0
                    call.tokens.cache_write = usage.cache_creation_input_tokens or 0
                    call.tokens.output = usage.output_tokens
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    call.text_sent = True
                    call.deltas += 1
                    yield TextDelta(event.delta.text)
                elif event.type == "message_delta":
                    call.tokens.output = event.usage.output_tokens
            final = await stream.get_final_message()
            call.tokens.output = final.usage.output_tokens
            yield Finished(final.stop_reason or "end_turn", final.model)


def create_provider(settings: LlmSettings, api_key: str | None) -> Provider:
    """Anthropic when a key is configured; the offline model in development otherwise."""
    wanted = settings.llm_provider
    if wanted == "anthropic" or (wanted == "auto" and api_key):
        if not api_key:
            raise ServiceConfigError("FOLIO_LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY")
        return AnthropicProvider(settings, api_key)
    if settings.is_production:
        raise ServiceConfigError("production needs ANTHROPIC_API_KEY: it refuses the offline model")
    log.warning("no ANTHROPIC_API_KEY: answering with the offline model")
    return OfflineProvider()
