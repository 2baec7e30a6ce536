"""The local Anthropic stand-in, driven over HTTP by the real ``anthropic`` SDK."""

import asyncio
import json
import threading
import time
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, TextBlock

from tests.fixtures.anthropic_server import (  # noqa: F401
    AnthropicServer,
    Fail,
    FailMidStream,
    Hang,
    Reply,
    anthropic_server,
    anthropic_server_session,
)

MODEL = "claude-sonnet-4-6"
HELLO: list[Any] = [{"role": "user", "content": "hello there"}]
DOCUMENT = "Folio keeps every revision of a document and renders it to PDF on demand."


@pytest.fixture
def server(anthropic_server: AnthropicServer) -> AnthropicServer:  # noqa: F811
    return anthropic_server


def sdk(server: AnthropicServer, **options: Any) -> anthropic.Anthropic:
    """A client of the stand-in; strict validation checks every response against the SDK's types."""
    options.setdefault("max_retries", 0)
    return anthropic.Anthropic(
        base_url=server.base_url,
        api_key=server.api_key,
        _strict_response_validation=True,
        **options,
    )


def async_sdk(server: AnthropicServer, **options: Any) -> anthropic.AsyncAnthropic:
    options.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(
        base_url=server.base_url,
        api_key=server.api_key,
        _strict_response_validation=True,
        **options,
    )


def text_of(message: Message) -> str:
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


def test_json_completion_has_text_usage_and_request_id(server):
    with sdk(server) as client:
        message = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=HELLO)
    first, second = server.requests
    assert text_of(message) == "Echo: hello there"
    assert message.id.startswith("msg_") and message.model == MODEL
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (2, 3)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
    assert message._request_id == first.request_id and first.request_id.startswith("req_")
    assert raw.headers["request-id"] == second.request_id
    assert text_of(raw.parse()) == "Echo: hello there"
    assert (first.method, first.path, first.status, first.stream) == (
        "POST",
        "/v1/messages",
        200,
        False,
    )
    assert first.body == {"model": MODEL, "max_tokens": 100, "messages": HELLO}
    assert first.headers["anthropic-version"]
    assert first.headers["authorization"] == f"Bearer {server.api_key}"
    assert isinstance(first.behaviour, Reply) and first.finished_at is not None


def test_reply_longer_than_max_tokens_is_cut_and_says_so(server):
    server.script(Reply("one two three four five"), Reply("alpha beta STOP gamma"))
    with sdk(server) as client:
        cut = client.messages.create(model=MODEL, max_tokens=3, messages=HELLO)
        stopped = client.messages.create(
            model=MODEL, max_tokens=100, messages=HELLO, stop_sequences=["STOP"]
        )
    assert (text_of(cut), cut.stop_reason, cut.usage.output_tokens) == (
        "one two three",
        "max_tokens",
        3,
    )
    assert (text_of(stopped), stopped.stop_reason, stopped.stop_sequence) == (
        "alpha beta",
        "stop_sequence",
        "STOP",
    )


def test_stream_yields_word_deltas_and_cumulative_usage(server):
    server.script(Reply("one two three four five"))
    with (
        sdk(server) as client,
        client.messages.stream(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi there friend"}]
        ) as stream,
    ):
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert deltas == ["one", " two", " three", " four", " five"]
    assert text_of(final) == "one two three four five" and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 5)
    (record,) = server.requests
    assert record.stream and record.deltas_sent == 5
    assert record.finished_at is not None and not record.disconnected


def test_stream_wire_format_is_the_messages_api_event_sequence(server):
    server.script(Reply("one two three"))
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/messages",
        headers={"x-api-key": server.api_key, "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 50, "messages": HELLO, "stream": True},
        timeout=10,
    ) as response:
        body = response.read().decode()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_")
    assert body.endswith("\n\n")
    events = []
    for frame in body.split("\n\n")[:-1]:
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name_line.removeprefix("event: ")
        events.append(data)
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert (start["usage"]["input_tokens"], start["usage"]["output_tokens"]) == (2, 1)
    assert events[1]["content_block"] == {"type": "text", "text": ""}
    assert [e["delta"] for e in events[3:6]] == [
        {"type": "text_delta", "text": text} for text in ("one", " two", " three")
    ]
    assert events[7]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[7]["usage"]["output_tokens"] == 3


async def test_async_client_streams_concurrently(server):
    server.default = Reply(delay=0.02)

    async def ask(client: anthropic.AsyncAnthropic, words: str) -> str:
        messages: list[Any] = [{"role": "user", "content": words}]
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=messages) as stream:
            return "".join([text async for text in stream.text_stream])

    async with async_sdk(server) as client:
        answers = await asyncio.gather(*(ask(client, f"question {n}") for n in range(4)))
        message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert answers == [f"Echo: question {n}" for n in range(4)]
    assert text_of(message) == "Echo: hello there"
    assert len(server.requests) == 5


@pytest.mark.parametrize(
    ("behaviour", "error", "kind"),
    [
        (Fail(400), anthropic.BadRequestError, "invalid_request_error"),
        (Fail(401), anthropic.AuthenticationError, "authentication_error"),
        (Fail(429), anthropic.RateLimitError, "rate_limit_error"),
        (Fail(500), anthropic.InternalServerError, "api_error"),
        (Fail(529), anthropic.OverloadedError, "overloaded_error"),
        # A JSON request cannot fail mid-stream; it gets the error's own status.
        (FailMidStream(), anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_scripted_errors_are_the_sdks_error_classes(server, behaviour, error, kind):
    server.script(behaviour)
    with sdk(server) as client, pytest.raises(error) as raised:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    (record,) = server.requests
    assert raised.value.type == kind and raised.value.status_code == record.status
    assert raised.value.request_id == record.request_id
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["request_id"] == record.request_id


def test_overloaded_then_success_is_retried_by_the_sdk(server):
    server.script(Fail(529))
    with sdk(server, max_retries=2) as client:
        message = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert text_of(message) == "Echo: hello there"
    first, second = server.requests
    assert (first.status, second.status) == (529, 200)
    assert [r.headers["x-stainless-retry-count"] for r in (first, second)] == ["0", "1"]
    assert server.script_left == 0


def test_rate_limit_retry_after_is_honoured(server):
    server.script(Fail(429, retry_after=1), Fail(429, retry_after=1))
    with sdk(server) as client, pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert raised.value.response.headers["retry-after"] == "1"
    server.reset()
    server.script(Fail(429, retry_after=1))
    began = time.monotonic()
    with sdk(server, max_retries=2) as client:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    elapsed = time.monotonic() - began
    first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 0.99
    assert elapsed >= 0.99


@pytest.mark.parametrize("scripted", [True, False])
def test_bad_request_is_not_retried(server, scripted):
    if scripted:
        server.script(Fail(400, "prompt is too long"))
    messages: list[Any] = HELLO if scripted else []
    with sdk(server, max_retries=2) as client, pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model=MODEL, max_tokens=100, messages=messages)
    (record,) = server.requests
    assert record.status == 400 and raised.value.type == "invalid_request_error"
    expected = "prompt is too long" if scripted else "messages: at least one message is required"
    assert raised.value.api_message == expected


def test_wrong_api_key_is_an_authentication_error(server):
    with (
        anthropic.Anthropic(base_url=server.base_url, api_key="sk-ant-wrong", max_retries=2) as c,
        pytest.raises(anthropic.AuthenticationError) as raised,
    ):
        c.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    (record,) = server.requests
    assert record.status == 401 and raised.value.type == "authentication_error"
    # A refused request consumes no scripted behaviour.
    assert record.behaviour is None


def test_mid_stream_overloaded_error_surfaces_after_text(server):
    server.script(FailMidStream(after_deltas=2, text="one two three four"))
    received: list[str] = []
    with (
        sdk(server, max_retries=2) as client,
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream,
    ):
        for text in stream.text_stream:
            received.append(text)
    assert received == ["one", " two"]
    # The HTTP status was 200: the SDK raises the bare class, never OverloadedError.
    assert type(raised.value) is anthropic.APIStatusError
    assert (raised.value.status_code, raised.value.type) == (200, "overloaded_error")
    (record,) = server.requests
    assert record.deltas_sent == 2 and not record.disconnected


def test_client_closing_a_slow_stream_is_recorded_within_a_second(server):
    server.script(Reply(" ".join(f"w{n}" for n in range(200)), delay=0.05))
    with (
        sdk(server) as client,
        client.messages.stream(model=MODEL, max_tokens=500, messages=HELLO) as stream,
    ):
        texts = stream.text_stream
        assert [next(texts) for _ in range(3)] == ["w0", " w1", " w2"]
        closing = time.monotonic()
    record = server.wait_for_disconnect(timeout=5)
    assert record.disconnected_at is not None
    assert 0 <= record.disconnected_at - closing < 1.0
    assert 3 <= record.deltas_sent < 200 and record.finished_at is None


async def test_async_client_closing_a_slow_stream_is_recorded(server):
    server.script(Reply(" ".join(f"w{n}" for n in range(200)), delay=0.05))
    async with (
        async_sdk(server) as client,
        client.messages.stream(model=MODEL, max_tokens=500, messages=HELLO) as stream,
    ):
        async for text in stream.text_stream:
            if text.strip() == "w2":
                break
        closing = time.monotonic()
    record = await asyncio.to_thread(server.wait_for_disconnect, 5)
    assert record.disconnected_at is not None
    assert 0 <= record.disconnected_at - closing < 1.0
    assert 3 <= record.deltas_sent < 200


def test_request_never_answered_times_the_client_out(server):
    server.script(Hang())
    began = time.monotonic()
    with sdk(server) as client, pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, timeout=0.5)
    assert 0.45 <= time.monotonic() - began < 5
    record = server.wait_for_disconnect(timeout=5)
    assert record.status is None and isinstance(record.behaviour, Hang)


def test_a_hanging_request_does_not_hold_up_stop():
    outcome: list[BaseException] = []

    def call(server: AnthropicServer) -> None:
        with sdk(server) as client:
            try:
                client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, timeout=60)
            except anthropic.APIError as exc:
                outcome.append(exc)

    with AnthropicServer() as own:
        own.script(Hang())
        caller = threading.Thread(target=call, args=(own,))
        caller.start()
        own.wait_for_requests(1)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5
    caller.join(10)
    assert not caller.is_alive()
    assert isinstance(outcome[0], anthropic.APIStatusError)


def test_cached_system_block_is_written_then_read(server):
    system: list[Any] = [{"type": "text", "text": DOCUMENT, "cache_control": {"type": "ephemeral"}}]
    ask: list[Any] = [{"role": "user", "content": "summarise it"}]
    document_tokens = len(DOCUMENT.split())
    with sdk(server) as client:
        first = client.messages.create(model=MODEL, max_tokens=100, system=system, messages=ask)
        with client.messages.stream(
            model=MODEL, max_tokens=100, system=system, messages=ask
        ) as stream:
            second = stream.get_final_message()
        other: list[Any] = [{**system[0], "text": "Another document entirely."}]
        third = client.messages.create(model=MODEL, max_tokens=100, system=other, messages=ask)
    assert first.usage.cache_creation_input_tokens == document_tokens
    assert (first.usage.cache_read_input_tokens, first.usage.input_tokens) == (0, 2)
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == document_tokens
    assert second.usage.cache_read_input_tokens == document_tokens
    assert (second.usage.cache_creation_input_tokens, second.usage.input_tokens) == (0, 2)
    assert (third.usage.cache_creation_input_tokens, third.usage.cache_read_input_tokens) == (3, 0)


def test_prefix_below_the_cache_minimum_is_not_cached(server):
    server.cache_min_tokens = 1024
    system: list[Any] = [{"type": "text", "text": DOCUMENT, "cache_control": {"type": "ephemeral"}}]
    with sdk(server) as client:
        usages = [
            client.messages.create(model=MODEL, max_tokens=100, system=system, messages=HELLO).usage
            for _ in range(2)
        ]
    for usage in usages:
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
        assert usage.input_tokens == len(DOCUMENT.split()) + 2


def test_count_tokens_counts_words(server):
    with sdk(server) as client:
        counted = client.messages.count_tokens(model=MODEL, system="be brief", messages=HELLO)
    assert counted.input_tokens == 4
    assert server.script_left == 0 and server.requests[0].behaviour is None


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "kind"),
    [
        ("/v1/messages", {}, {"model": MODEL, "max_tokens": 5, "messages": HELLO}, 400, None),
        ("/v1/messages", {"anthropic-version": "2023-06-01"}, {"model": MODEL}, 400, None),
        ("/v1/complete", {"anthropic-version": "2023-06-01"}, {}, 404, "not_found_error"),
    ],
)
def test_malformed_requests_get_error_bodies(server, path, headers, body, status, kind):
    response = httpx.post(
        f"{server.base_url}{path}",
        headers={"x-api-key": server.api_key, **headers},
        json=body,
        timeout=10,
    )
    error = response.json()
    assert response.status_code == status
    assert error["type"] == "error"
    assert error["error"]["type"] == (kind or "invalid_request_error")
    assert error["request_id"] == response.headers["request-id"] == server.requests[0].request_id
