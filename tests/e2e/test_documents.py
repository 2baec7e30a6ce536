"""Documents through the gateway, as a REST client uses them: CRUD, search, revisions,
attachments uploaded straight to storage, PDF exports, and account deletion."""

import io
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import httpx
import psycopg
import pytest
from pypdf import PdfReader

from tests.fixtures.s3 import S3Server
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Client:
    """A REST client of one user."""

    def __init__(self, stack: Stack, email: str) -> None:
        self.base = stack.gateway_url
        self.headers = bearer(stack.mint_token(email))

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.base}{path}", headers=self.headers, timeout=30, **kwargs
        )

    def create(self, title: str, content: str = "") -> dict[str, Any]:
        response = self.request("POST", "/api/documents", json={"title": title, "content": content})
        assert response.status_code == 201, response.text
        document: dict[str, Any] = response.json()
        return document

    def wait_for_task(self, task_id: str, within: float = 90) -> dict[str, Any]:
        """The task once final, through short long polls."""
        deadline = time.monotonic() + within
        while True:
            response = self.request("GET", f"/api/tasks/{task_id}?wait_seconds=2")
            assert response.status_code == 200, response.text
            task: dict[str, Any] = response.json()
            if task["status"] in ("completed", "failed", "cancelled"):
                return task
            assert time.monotonic() < deadline, f"task {task_id} stayed {task['status']}"


def png(width: int = 4, height: int = 3) -> bytes:
    """A small valid PNG, red."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def upload(upload_spec: dict[str, Any], data: bytes) -> httpx.Response:
    """Send the bytes to storage as a browser form would, with no Folio credentials."""
    assert upload_spec["method"] == "POST"
    return httpx.post(
        upload_spec["url"],
        data=upload_spec["fields"],
        files={"file": ("upload", data)},
        headers=upload_spec.get("headers", {}),
        timeout=30,
    )


def attach(client: Client, document_id: str, data: bytes, content_type: str) -> dict[str, Any]:
    created = client.request(
        "POST",
        f"/api/documents/{document_id}/attachments",
        json={"filename": "picture.png", "content_type": content_type, "size_bytes": len(data)},
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def test_documents_are_created_changed_searched_restored_and_deleted(stack: Stack) -> None:
    alice = Client(stack, "docs-alice@example.com")
    bob = Client(stack, "docs-bob@example.com")
    created = alice.create("Field notes", "The quick brown fox.")
    assert created["revision"] == 1 and created["word_count"] == 4
    doc = f"/api/documents/{created['id']}"

    fetched = alice.request("GET", doc)
    assert fetched.status_code == 200 and fetched.json()["content"] == "The quick brown fox."

    changed = alice.request(
        "PATCH",
        doc,
        params={"update_mask": "content"},
        json={"content": "The quick brown fox met a pangolin.", "etag": created["etag"]},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["revision"] == 2 and changed.json()["etag"] != created["etag"]
    stale = alice.request(
        "PATCH",
        doc,
        params={"update_mask": "title"},
        json={"title": "Overwritten", "etag": created["etag"]},
    )
    assert stale.status_code == 409, stale.text
    assert stale.json()["error"]["status"] == "ABORTED"
    assert alice.request("GET", doc).json()["title"] == "Field notes"

    alice.create("Shopping", "milk, eggs")
    bob.create("Bob's pangolin diary", "pangolin pangolin")
    listed = alice.request("GET", "/api/documents").json()["documents"]
    assert [d["title"] for d in listed] == ["Shopping", "Field notes"]
    assert all("content" not in d for d in listed)
    full = alice.request("GET", "/api/documents", params={"view": "FULL"}).json()["documents"]
    assert full[1]["content"] == "The quick brown fox met a pangolin."
    # "pangolin" is only in the body of Alice's document; Bob's never shows.
    found = alice.request("GET", "/api/documents", params={"q": "pangolin"}).json()["documents"]
    assert [d["id"] for d in found] == [created["id"]]

    revisions = alice.request("GET", f"{doc}/revisions").json()["revisions"]
    assert [(r["revision"], r["author"]) for r in revisions] == [(2, "user"), (1, "user")]
    assert "content" not in revisions[0]
    first = alice.request("GET", f"{doc}/revisions/1").json()
    assert first["content"] == "The quick brown fox."
    restored = alice.request("POST", f"{doc}/revisions/1/restore")
    assert restored.status_code == 200, restored.text
    assert restored.json()["content"] == "The quick brown fox." and restored.json()["revision"] == 3
    latest = alice.request("GET", f"{doc}/revisions").json()["revisions"][0]
    assert (latest["author"], latest["restored_from"]) == ("restore", 1)

    # Another user's document is the same 404 as one that does not exist.
    theirs = bob.request("GET", doc)
    unknown = bob.request("GET", "/api/documents/01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["error"] == unknown.json()["error"]
    assert bob.request("PATCH", doc, json={"title": "mine"}).status_code == 404
    assert bob.request("DELETE", doc).status_code == 404

    deleted = alice.request("DELETE", doc)
    assert deleted.status_code == 204 and deleted.content == b""
    assert alice.request("GET", doc).status_code == 404


def test_search_ranks_title_matches_above_body_matches(stack: Stack) -> None:
    client = Client(stack, "docs-rank@example.com")
    in_body = client.create("Garden notes", "We saw an axolotl near the pond, then tea.")
    in_title = client.create("Axolotl care", "Water, shade and patience.")
    client.create("Unrelated", "Nothing to see here.")
    found = client.request("GET", "/api/documents", params={"q": "axolotl"}).json()["documents"]
    assert [d["id"] for d in found] == [in_title["id"], in_body["id"]]
    # Pages of a search follow the same order.
    first = client.request("GET", "/api/documents", params={"q": "axolotl", "page_size": 1})
    token = first.json()["next_page_token"]
    second = client.request(
        "GET", "/api/documents", params={"q": "axolotl", "page_size": 1, "page_token": token}
    )
    assert [d["id"] for d in first.json()["documents"]] == [in_title["id"]]
    assert [d["id"] for d in second.json()["documents"]] == [in_body["id"]]
    assert second.json()["next_page_token"] == ""


def test_limits_are_field_violations(stack: Stack) -> None:
    client = Client(stack, "docs-limits@example.com")
    cases = [
        ({"title": ""}, "title"),
        ({"title": "x" * 301}, "title"),
        ({"title": "ok", "content": "x" * (1024 * 1024 + 1)}, "content"),
        ({"title": "nul\u0000"}, "title"),
    ]
    for body, field in cases:
        response = client.request("POST", "/api/documents", json=body)
        assert response.status_code == 400, (body, response.text)
        details = response.json()["error"]["details"]
        violations = [
            v["field"]
            for d in details
            for v in d.get("fieldViolations", d.get("field_violations", []))
        ]
        assert field in " ".join(violations), details


def objects_under(s3_server: S3Server, bucket: str, prefix: str) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name=s3_server.region,
    )
    try:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]
    finally:
        client.close()


def test_attachments_upload_straight_to_storage_and_are_checked(
    stack: Stack, s3_server: S3Server
) -> None:
    client = Client(stack, "docs-attach@example.com")
    document = client.create("With a picture")
    base = f"/api/documents/{document['id']}/attachments"
    data = png()
    created = attach(client, document["id"], data, "image/png")
    assert created["attachment"]["status"] == "pending"
    stored = upload(created["upload"], data)
    assert stored.status_code in (200, 201, 204), stored.text
    attachment_id = created["attachment"]["id"]
    completed = client.request("POST", f"{base}/{attachment_id}/complete")
    assert completed.status_code == 200, completed.text
    assert completed.json()["status"] == "ready"
    got = client.request("GET", f"{base}/{attachment_id}").json()
    downloaded = httpx.get(got["download_url"], timeout=30)
    assert downloaded.status_code == 200 and downloaded.content == data
    assert [a["id"] for a in client.request("GET", base).json()["attachments"]] == [attachment_id]

    # A "PNG" whose bytes are a ZIP: refused at complete, and its object is gone.
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("a.txt", "not a picture")
    fake = archive.getvalue()
    disguised = attach(client, document["id"], fake, "image/png")
    assert upload(disguised["upload"], fake).status_code in (200, 201, 204)
    key = disguised["upload"]["fields"]["key"]
    refused = client.request("POST", f"{base}/{disguised['attachment']['id']}/complete")
    assert refused.status_code == 400, refused.text
    bucket = stack.env["FOLIO_S3_BUCKET"]
    assert objects_under(s3_server, bucket, key) == []

    # Storage itself refuses a body larger than declared.
    small = attach(client, document["id"], data, "image/png")
    too_big = upload(small["upload"], data + b"extra bytes")
    assert 400 <= too_big.status_code < 500
    assert objects_under(s3_server, bucket, small["upload"]["fields"]["key"]) == []

    deleted = client.request("DELETE", f"{base}/{attachment_id}")
    assert deleted.status_code == 204
    assert client.request("GET", f"{base}/{attachment_id}").status_code == 404


EXPORTED = """# Expedition report

Written by the team, with *emphasis* and **strength**.

## Languages

Καλημέρα κόσμε — Привет, мир — Crème brûlée, façade, naïve.

1. First step
   - a nested point
   - another nested point
2. Second step

```python
def greet(name):
    return f"hello {name}"
```

![the map](attachment:{attachment_id})

| Day | Distance | Notes |
|-----|---------:|-------|
{rows}
"""


@pytest.fixture
def watched_url() -> Iterator[tuple[str, list[str]]]:
    """A local URL that records any request made to it."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tracker.png", hits
    finally:
        server.shutdown()
        server.server_close()


def export(client: Client, document_id: str) -> dict[str, Any]:
    queued = client.request("POST", f"/api/documents/{document_id}/export")
    assert queued.status_code == 202, queued.text
    assert queued.json()["status"] == "pending"
    task = client.wait_for_task(queued.json()["task_id"])
    assert task["status"] == "completed", task
    result: dict[str, Any] = task["result"]["result"]
    return result


def pdf_text(url: str) -> tuple[str, int, bytes]:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    reader = PdfReader(io.BytesIO(response.content))
    return (
        "\n".join(page.extract_text() for page in reader.pages),
        len(reader.pages),
        response.content,
    )


def test_export_renders_a_rich_document_to_pdf(stack: Stack) -> None:
    client = Client(stack, "docs-export@example.com")
    document = client.create("Expedition", "draft")
    data = png(40, 30)
    created = attach(client, document["id"], data, "image/png")
    assert upload(created["upload"], data).status_code in (200, 201, 204)
    attachment_id = created["attachment"]["id"]
    completed = client.request(
        "POST", f"/api/documents/{document['id']}/attachments/{attachment_id}/complete"
    )
    assert completed.status_code == 200
    rows = "\n".join(f"| {day} | {day * 7} km | camp {day} |" for day in range(1, 121))
    content = EXPORTED.replace("{attachment_id}", attachment_id).replace("{rows}", rows)
    updated = client.request("PATCH", f"/api/documents/{document['id']}", json={"content": content})
    assert updated.status_code == 200, updated.text

    result = export(client, document["id"])
    assert result["revision"] == 2
    text, pages, raw = pdf_text(result["download_url"])
    assert raw.startswith(b"%PDF-")
    assert pages == result["pages"] > 1 and result["size_bytes"] == len(raw)
    for expected in (
        "Expedition report",
        "Καλημέρα κόσμε",
        "Привет, мир",
        "Crème brûlée, façade, naïve.",
        "a nested point",
        'return f"hello {name}"',
        "camp 120",
        f"Page 1 of {pages}",
    ):
        assert expected in text, expected
    reader = PdfReader(io.BytesIO(raw))
    assert any("/XObject" in str(page.get("/Resources", {})) for page in reader.pages)

    # An unchanged revision reuses the stored PDF.
    again = export(client, document["id"])
    assert again["revision"] == 2 and again["size_bytes"] == result["size_bytes"]


def test_export_shows_markup_literally_and_fetches_nothing(
    stack: Stack, watched_url: tuple[str, list[str]]
) -> None:
    url, hits = watched_url
    client = Client(stack, "docs-literal@example.com")
    content = (
        f'Before <img src="{url}"> and <font color="red">red</font> & more.\n\n![remote]({url})\n'
    )
    document = client.create("Literal", content)
    result = export(client, document["id"])
    text, _, _ = pdf_text(result["download_url"])
    flat = " ".join(text.split())
    assert '<font color="red">red</font> & more.' in flat
    assert "<img src=" in flat
    assert hits == []


def test_account_deletion_removes_documents_and_every_object(
    stack: Stack, s3_server: S3Server
) -> None:
    client = Client(stack, "docs-leaving@example.com")
    me = client.request("GET", "/api/users/me").json()
    document = client.create("Soon gone", "![x](attachment:none)")
    data = png()
    created = attach(client, document["id"], data, "image/png")
    assert upload(created["upload"], data).status_code in (200, 201, 204)
    export(client, document["id"])
    bucket = stack.env["FOLIO_S3_BUCKET"]
    prefix = f"users/{me['id']}/"
    assert len(objects_under(s3_server, bucket, prefix)) == 2

    queued = client.request("DELETE", "/api/users/me")
    assert queued.status_code == 202
    task_id = queued.json()["task_id"]
    deadline = time.monotonic() + 60
    with psycopg.connect(stack.env["FOLIO_DATABASE_URL"], autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT status FROM tasks.tasks WHERE id = %s", (task_id,)
            ).fetchone()
            if row and row[0] in ("completed", "failed"):
                break
            assert time.monotonic() < deadline, "the deletion did not finish"
            time.sleep(0.2)
        assert row[0] == "completed"
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM documents.documents WHERE user_id = %(u)s),"
            " (SELECT count(*) FROM documents.attachments WHERE user_id = %(u)s)",
            {"u": me["id"]},
        ).fetchone()
    assert counts == (0, 0)
    assert objects_under(s3_server, bucket, prefix) == []


def test_a_path_spelled_out_is_not_taken_for_a_document_id(stack: Stack) -> None:
    client = Client(stack, "docs-paths@example.com")
    response = client.request("GET", "/api/documents/generate")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
