"""Claude through the gateway, as a REST client uses it: the real SDK in the LLM service
talks to a local Messages API server that the tests script."""

import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from tests.fixtures.anthropic_server import (
    AnthropicServer,
    Fail,
    FailMidStream,
    Hang,
    Reply,
    anthropic_server_session,  # noqa: F401
)
from tests.fixtures.google_issuer import GoogleIssuer
from tests.fixtures.processes import wait_until
from tests.fixtures.s3 import S3Server
from tests.fixtures.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

ADMIN_BUDGET = 3000
READ_TIMEOUT = 2


@pytest.fixture(scope="module")
def llm_stack(
    postgres_server_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    google_issuer: GoogleIssuer,
    s3_server: S3Server,
    anthropic_server_session: AnthropicServer,  # noqa: F811
) -> Iterator[Stack]:
    """Every process, the LLM service pointed at the local Messages API server."""
    env = {
        **google_issuer.stack_env(),
        **s3_server.env(f"folio-e2e-llm-{secrets.token_hex(4)}"),
        **anthropic_server_session.env(),
        "FOLIO_LLM_PROVIDER": "anthropic",
        "FOLIO_LLM_MODELS": "claude-sonnet-4-5",
        "FOLIO_LLM_DEFAULT_MODEL": "claude-sonnet-4-5",
        "FOLIO_LLM_BUDGET_TOKENS_ADMIN": str(ADMIN_BUDGET),
        "FOLIO_LLM_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT),
        "FOLIO_LLM_MAX_RETRIES": "2",
        "FOLIO_TASK_RETRY_BACKOFF_SECONDS": "0.5",
    }
    with running_stack(
        tmp_path_factory.mktemp("llm-stack"),
        postgres_server_url,
        redis_url,
        env,
        prefix="folio_e2e_llm",
    ) as stack:
        yield stack


@pytest.fixture
def upstream(anthropic_server_session: AnthropicServer) -> Iterator[AnthropicServer]:  # noqa: F811
    anthropic_server_session.reset()
    yield anthropic_server_session
    anthropic_server_session.reset()


class Client:
    def __init__(self, stack: Stack, email: str, **roles: bool) -> None:
        self.stack = stack
        self.base = stack.gateway_url
        self.headers = {"Authorization": f"Bearer {stack.mint_token(email, **roles)}"}

    def post(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return httpx.post(
            f"{self.base}{path}", json=body, headers={**self.headers, **(headers or {})}, timeout=60
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers=self.headers, timeout=60, **kwargs)

    def patch(self, path: str, body: Any) -> httpx.Response:
        return httpx.patch(f"{self.base}{path}", json=body, headers=self.headers, timeout=60)

    def user_id(self) -> str:
        return str(self.get("/api/users/me").json()["id"])

    def wait_for_task(self, task_id: str, within: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            task: dict[str, Any] = self.get(f"/api/tasks/{task_id}?wait_seconds=2").json()
            if task["status"] in ("completed", "failed", "cancelled"):
                return task
            assert time.monotonic() < deadline, f"task {task_id} stayed {task['status']}"

    def wait_until_running(self, task_id: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while self.get(f"/api/tasks/{task_id}?wait_seconds=1").json()["status"] != "running":
            assert time.monotonic() < deadline, "the task did not start"


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of an SSE body; unnamed events are "message"."""
    events = []
    for block in response.text.split("\n\n"):
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data += line.removeprefix("data:").strip()
        if data:
            events.append((name, json.loads(data)))
    return events


def calls(stack: Stack, user_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(stack.env["FOLIO_DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT operation, outcome, input_tokens, output_tokens, cache_read_tokens,"
            " cache_write_tokens, upstream_request_id FROM llm.calls WHERE user_id = %s"
            " ORDER BY id",
            (user_id,),
        ).fetchall()
    keys = ("operation", "outcome", "input", "output", "cache_read", "cache_write", "request_id")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def test_complete_stream_and_usage(llm_stack: Stack, upstream: AnthropicServer) -> None:
    client = Client(llm_stack, "llm-premium@example.com", premium=True)
    upstream.script(Reply("A calm answer in six words."), Reply("one two three four five"))
    completed = client.post("/api/llm/complete", chat("Say something calm"))
    assert completed.status_code == 200, completed.text
    body = completed.json()
    assert body["text"] == "A calm answer in six words."
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["output_tokens"] == 6 and body["usage"]["input_tokens"] == 3

    streamed = client.post(
        "/api/llm/stream", chat("Count to five"), headers={"Accept": "text/event-stream"}
    )
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed)
    deltas = [data["text"] for name, data in events if name == "delta"]
    assert len(deltas) >= 5 and "".join(deltas).split() == "one two three four five".split()
    last_name, last = events[-1]
    assert last_name == "done" and last["usage"]["output_tokens"] == 5
    assert last["stop_reason"] == "end_turn"

    usage = client.get("/api/llm/usage").json()
    assert usage["usage"]["output_tokens"] == 11
    assert int(usage["used_tokens"]) == 11 + 3 + 3
    assert int(usage["remaining_tokens"]) == int(usage["budget_tokens"]) - 17
    recorded = calls(llm_stack, client.user_id())
    assert [c["outcome"] for c in recorded] == ["ok", "ok"]
    assert all(c["request_id"].startswith("req_") for c in recorded)


def test_a_user_without_premium_gets_402_and_nothing_reaches_the_model(
    llm_stack: Stack, upstream: AnthropicServer
) -> None:
    client = Client(llm_stack, "llm-free@example.com")
    for path in ("/api/llm/complete", "/api/llm/stream"):
        response = client.post(path, chat("hello"))
        assert response.status_code == 402, response.text
    assert upstream.requests == []
    assert client.get("/api/llm/usage").status_code == 200


def test_limits_are_field_violations(llm_stack: Stack, upstream: AnthropicServer) -> None:
    client = Client(llm_stack, "llm-limits@example.com", premium=True)
    bodies: list[dict[str, Any]] = [
        chat("x", max_tokens=100_000),
        chat("x", model="gpt-4"),
        {"messages": []},
        {"messages": [{"role": "assistant", "content": "I go first"}]},
    ]
    for body in bodies:
        response = client.post("/api/llm/complete", body)
        assert response.status_code == 400, (body, response.text)
    assert upstream.requests == []


def test_overloaded_then_success_is_retried(llm_stack: Stack, upstream: AnthropicServer) -> None:
    client = Client(llm_stack, "llm-retry@example.com", premium=True)
    upstream.script(Fail(529, retry_after=0.2), Reply("fine now"))
    response = client.post("/api/llm/complete", chat("again"))
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "fine now"
    assert len(upstream.requests) == 2


def test_a_rate_limit_retry_after_is_honoured(llm_stack: Stack, upstream: AnthropicServer) -> None:
    client = Client(llm_stack, "llm-429@example.com", premium=True)
    upstream.script(Fail(429, retry_after=2), Reply("after the wait"))
    response = client.post("/api/llm/complete", chat("please"))
    assert response.status_code == 200, response.text
    first, second = upstream.wait_for_requests(2)
    assert second.received_at - first.received_at >= 1.9


def test_persistent_rate_limits_are_429_with_retry_after(
    llm_stack: Stack, upstream: AnthropicServer
) -> None:
    client = Client(llm_stack, "llm-429s@example.com", premium=True)
    upstream.default = Fail(429, retry_after=1)
    response = client.post("/api/llm/complete", chat("please"))
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"


def test_a_mid_stream_error_ends_the_stream_and_charges_what_was_sent(
    llm_stack: Stack, upstream: AnthropicServer
) -> None:
    client = Client(llm_stack, "llm-midstream@example.com", premium=True)
    upstream.script(FailMidStream(after_deltas=3, text="alpha beta gamma delta epsilon"))
    response = client.post("/api/llm/stream", chat("go"), headers={"Accept": "text/event-stream"})
    assert response.status_code == 200
    events = sse_events(response)
    assert [data["text"] for name, data in events if name == "delta"] != []
    name, last = events[-1]
    assert name == "error" and last["error"]["code"] in (429, 503), last
    assert len(upstream.requests) == 1  # text had been sent: no retry
    recorded = calls(llm_stack, client.user_id())
    assert recorded[-1]["outcome"] == "error" and recorded[-1]["output"] == 3


def test_an_upstream_that_never_answers_times_out(
    llm_stack: Stack, upstream: AnthropicServer
) -> None:
    client = Client(llm_stack, "llm-hang@example.com", premium=True)
    upstream.default = Hang()
    started = time.monotonic()
    response = client.post("/api/llm/complete", chat("anyone there?"))
    elapsed = time.monotonic() - started
    assert response.status_code in (503, 504), response.text
    # Three attempts of READ_TIMEOUT each, with the SDK's short backoff in between.
    assert elapsed < 3 * READ_TIMEOUT + 8


def test_a_client_that_drops_a_stream_stops_the_model(
    llm_stack: Stack, upstream: AnthropicServer
) -> None:
    client = Client(llm_stack, "llm-drop@example.com", premium=True)
    upstream.script(Reply(" ".join(f"word{i}" for i in range(200)), delay=0.1))
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            f"{client.base}/api/llm/stream",
            json=chat("a long one"),
            headers={**client.headers, "Accept": "text/event-stream"},
        ) as response,
    ):
        seen = 0
        for line in response.iter_lines():
            if line.startswith("event: delta"):
                seen += 1
                if seen == 3:
                    break
        dropped = time.monotonic()
    record = upstream.wait_for_disconnect(timeout=5)
    assert record.disconnected_at is not None
    assert record.disconnected_at - dropped < 1.0
    sent = record.deltas_sent
    user_id = client.user_id()

    def settled() -> bool:
        recorded = calls(llm_stack, user_id)
        return bool(recorded) and recorded[-1]["outcome"] != "running"

    wait_until(settled, 10, "the call to settle")
    last = calls(llm_stack, user_id)[-1]
    assert last["outcome"] == "cancelled"
    assert 3 <= last["output"] <= sent


def test_concurrent_calls_never_overspend_the_budget(
    llm_stack: Stack, upstream: AnthropicServer
) -> None:
    client = Client(llm_stack, "llm-quota@example.com", admin=True)
    upstream.default = Reply(" ".join(["token"] * 150))
    body = chat("spend", max_tokens=200)
    worst = len(b"spend") + 200
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: client.post("/api/llm/complete", body), range(20)))
    statuses = [reply.status_code for reply in replies]
    assert set(statuses) <= {200, 429}
    used = sum(c["input"] + c["output"] for c in calls(llm_stack, client.user_id()))
    assert used <= ADMIN_BUDGET + worst
    for _ in range(40):
        response = client.post("/api/llm/complete", body)
        if response.status_code == 429:
            break
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["details"][0]["reason"] == "QUOTA_EXCEEDED"
    assert int(response.headers["retry-after"]) > 0
    usage = client.get("/api/llm/usage").json()
    assert int(usage["used_tokens"]) <= ADMIN_BUDGET


def create_document(client: Client, title: str, content: str) -> dict[str, Any]:
    response = client.post("/api/documents", {"title": title, "content": content})
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


def test_generate_summarize_rewrite_and_restore(
    llm_stack: Stack, upstream: AnthropicServer
) -> None:
    client = Client(llm_stack, "llm-ai@example.com", premium=True)
    upstream.script(Reply("# Composting\n\nGreens and browns, turned weekly."))
    queued = client.post("/api/documents/generate", {"prompt": "A guide to composting"})
    assert queued.status_code == 202, queued.text
    task = client.wait_for_task(queued.json()["task_id"])
    assert task["status"] == "completed", task
    document_id = task["result"]["result"]["document_id"]
    document = client.get(f"/api/documents/{document_id}").json()
    assert document["title"] == "Composting"
    assert "Greens and browns" in document["content"]

    upstream.script(Reply("A short guide to composting."))
    summarized = client.wait_for_task(
        client.post(f"/api/documents/{document_id}/summarize").json()["task_id"]
    )
    assert summarized["status"] == "completed", summarized
    assert client.get(f"/api/documents/{document_id}").json()["summary"] == (
        "A short guide to composting."
    )

    upstream.script(Reply("# Composting\n\nMix, wait, use."))
    rewritten = client.wait_for_task(
        client.post(
            f"/api/documents/{document_id}/rewrite", {"instruction": "Make it shorter"}
        ).json()["task_id"]
    )
    assert rewritten["status"] == "completed", rewritten
    revisions = client.get(f"/api/documents/{document_id}/revisions").json()["revisions"]
    assert revisions[0]["author"] == "ai:rewrite"
    restored = client.post(f"/api/documents/{document_id}/revisions/1/restore")
    assert "Greens and browns" in restored.json()["content"]

    # Both operations on the document sent it as a cached block; the second read the cache.
    summary_request, rewrite_request = upstream.requests[1], upstream.requests[2]
    for request in (summary_request, rewrite_request):
        block = request.body["system"][0]
        assert block["cache_control"] == {"type": "ephemeral"}
        assert "Greens and browns" in block["text"]
    recorded = calls(llm_stack, client.user_id())
    assert recorded[1]["cache_write"] > 0 and recorded[2]["cache_read"] > 0
    assert [c["operation"] for c in recorded] == [
        "document.generate",
        "document.summarize",
        "document.rewrite",
    ]


def test_a_rewrite_never_overwrites_a_newer_edit(
    llm_stack: Stack, upstream: AnthropicServer
) -> None:
    client = Client(llm_stack, "llm-conflict@example.com", premium=True)
    document = create_document(client, "Draft", "The original text.")
    upstream.script(Reply(" ".join(["rewritten"] * 30), delay=0.1))
    task_id = client.post(
        f"/api/documents/{document['id']}/rewrite", {"instruction": "Rewrite"}
    ).json()["task_id"]
    upstream.wait_for_requests(1, timeout=30)
    edited = client.patch(f"/api/documents/{document['id']}", {"content": "My newer edit."})
    assert edited.status_code == 200
    task = client.wait_for_task(task_id)
    assert task["status"] == "failed" and "conflict" in task["error"], task
    current = client.get(f"/api/documents/{document['id']}").json()
    assert current["content"] == "My newer edit." and current["revision"] == 2


def test_cancelling_a_rewrite_stops_the_model_and_writes_nothing(
    llm_stack: Stack, upstream: AnthropicServer
) -> None:
    client = Client(llm_stack, "llm-cancel@example.com", premium=True)
    document = create_document(client, "Draft", "Keep me.")
    upstream.script(Reply(" ".join(["slow"] * 300), delay=0.1))
    task_id = client.post(
        f"/api/documents/{document['id']}/rewrite", {"instruction": "Rewrite"}
    ).json()["task_id"]
    upstream.wait_for_requests(1, timeout=30)
    client.wait_until_running(task_id)
    cancelled = client.post(f"/api/tasks/{task_id}/cancel", {})
    assert cancelled.status_code == 200, cancelled.text
    record = upstream.wait_for_disconnect(timeout=10)
    assert record.deltas_sent < 300
    task = client.wait_for_task(task_id)
    assert task["status"] == "cancelled", task
    current = client.get(f"/api/documents/{document['id']}").json()
    assert current["revision"] == 1 and current["content"] == "Keep me."


def test_usage_is_purged_with_the_account(
    llm_stack: Stack,
    upstream: AnthropicServer,  # noqa: ARG001  (a fresh script: the default reply)
) -> None:
    client = Client(llm_stack, "llm-leaving@example.com", premium=True)
    assert client.post("/api/llm/complete", chat("hi")).status_code == 200
    user_id = client.user_id()
    assert calls(llm_stack, user_id)
    deleted = httpx.delete(f"{client.base}/api/users/me", headers=client.headers, timeout=30)
    task_id = deleted.json()["task_id"]
    with psycopg.connect(llm_stack.env["FOLIO_DATABASE_URL"], autocommit=True) as conn:
        wait_until(
            lambda: (
                conn.execute("SELECT status FROM tasks.tasks WHERE id = %s", (task_id,)).fetchone()
                == ("completed",)
            ),
            60,
            "the account deletion",
        )
    assert calls(llm_stack, user_id) == []
