"""Object storage against a real S3 server, and presigned transfers over plain HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import pytest

from libs.seaweedfs import EmbeddedS3, start_seaweedfs
from libs.storage import (
    ObjectNotFound,
    PresignedUpload,
    Storage,
    StorageConfig,
    StorageError,
    StorageUnavailable,
)
from tests.fixtures.processes import free_port

if TYPE_CHECKING:
    from tests.fixtures.s3 import S3Server


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
# A refused connection is retried twice after short backoffs; a hang would take far longer.
UNAVAILABLE_WITHIN_SECONDS = 10.0


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client, standing in for a browser."""
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def browser_upload(
    http: httpx.AsyncClient, upload: PresignedUpload, body: bytes, **overrides: str
) -> httpx.Response:
    """Send the upload as an HTML form would: the fields, then the file as the last part."""
    fields = {**upload.fields, **overrides}
    content_type = fields.get("Content-Type", "application/octet-stream")
    return await http.request(
        upload.method,
        upload.url,
        headers=upload.headers,
        data=fields,
        files={"file": ("upload.bin", body, content_type)},
    )


def with_host(url: str, host: str) -> str:
    parts = urlsplit(url)
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def other_name(url: str) -> str:
    """The same local endpoint under its other name (127.0.0.1 <-> localhost)."""
    host = urlsplit(url).hostname
    if host == "127.0.0.1":
        return with_host(url, "localhost")
    if host == "localhost":
        return with_host(url, "127.0.0.1")
    pytest.skip(f"{host} has no second local name")


# --------------------------------------------------------------------------- objects


async def test_put_head_get(storage: Storage) -> None:
    await storage.put("users/u1/documents/d1/a.png", PNG, "image/png")

    info = await storage.head("users/u1/documents/d1/a.png")
    assert info is not None
    assert info.size == len(PNG)
    assert info.content_type == "image/png"
    assert info.etag == hashlib.md5(PNG).hexdigest()
    assert abs(info.last_modified - datetime.now(UTC)) < timedelta(minutes=5)
    assert await storage.get("users/u1/documents/d1/a.png") == PNG


async def test_put_replaces_an_object(storage: Storage) -> None:
    await storage.put("k/notes.txt", b"first", "text/plain")
    await storage.put("k/notes.txt", b"second version", "text/markdown")

    info = await storage.head("k/notes.txt")
    assert info is not None
    assert (info.size, info.content_type) == (len(b"second version"), "text/markdown")
    assert await storage.get("k/notes.txt") == b"second version"


async def test_missing_object(storage: Storage) -> None:
    assert await storage.head("nothing/here") is None
    with pytest.raises(ObjectNotFound) as raised:
        await storage.get("nothing/here")
    assert raised.value.key == "nothing/here"
    with pytest.raises(ObjectNotFound):
        await storage.read_range("nothing/here", 0, 8)


async def test_read_range(storage: Storage) -> None:
    await storage.put("r/a.png", PNG, "image/png")

    assert await storage.read_range("r/a.png", 0, 8) == PNG[:8]
    assert await storage.read_range("r/a.png", 8, 3) == PNG[8:11]
    # A range running past the end gives what is there; one starting past it, nothing.
    assert await storage.read_range("r/a.png", len(PNG) - 4, 100) == PNG[-4:]
    assert await storage.read_range("r/a.png", len(PNG), 8) == b""
    with pytest.raises(ValueError):
        await storage.read_range("r/a.png", 0, 0)


async def test_delete_is_idempotent(storage: Storage) -> None:
    await storage.put("d/a.txt", b"a", "text/plain")

    await storage.delete("d/a.txt")
    await storage.delete("d/a.txt")

    assert await storage.head("d/a.txt") is None


async def test_delete_prefix_removes_only_that_prefix(storage: Storage) -> None:
    inside = [f"users/u1/documents/d1/{n}.txt" for n in range(5)] + ["users/u1/documents/d1/x/y"]
    outside = ["users/u1/documents/d10/0.txt", "users/u1/documents/d2/0.txt", "users/u12/a"]
    await asyncio.gather(*(storage.put(key, b"x", "text/plain") for key in inside + outside))

    assert await storage.delete_prefix("users/u1/documents/d1/") == len(inside)

    for key in inside:
        assert await storage.head(key) is None
    for key in outside:
        assert await storage.head(key) is not None
    assert await storage.delete_prefix("users/u1/documents/d1/") == 0


async def test_delete_prefix_spans_several_pages(storage: Storage) -> None:
    # S3 lists and deletes at most 1000 keys per request.
    keys = [f"many/{n:05d}" for n in range(1005)]
    for start in range(0, len(keys), 50):
        await asyncio.gather(*(storage.put(key, b"", "text/plain") for key in keys[start:][:50]))

    assert await storage.delete_prefix("many/") == len(keys)

    assert await storage.head(keys[0]) is None
    assert await storage.head(keys[-1]) is None


async def test_delete_prefix_refuses_an_empty_prefix(storage: Storage) -> None:
    await storage.put("keep/me", b"x", "text/plain")

    with pytest.raises(ValueError):
        await storage.delete_prefix("")

    assert await storage.head("keep/me") is not None


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a/..", "./a", "a//b", "a/\nb", "x" * 1025])
async def test_malformed_keys_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        await storage.put(key, b"x", "text/plain")


async def test_ensure_bucket_twice(storage: Storage) -> None:
    await storage.ensure_bucket()

    await storage.put("still/there", b"x", "text/plain")
    await storage.ensure_bucket()
    assert await storage.get("still/there") == b"x"


async def test_missing_bucket_is_a_storage_error(storage_config: StorageConfig) -> None:
    store = Storage(storage_config)  # bucket never created
    try:
        with pytest.raises(StorageError) as raised:
            await store.put("a/b", b"x", "text/plain")
        assert not isinstance(raised.value, StorageUnavailable | ObjectNotFound)
    finally:
        store.close()


# --------------------------------------------------------------------------- presigned


async def test_presigned_upload_from_a_browser(storage: Storage, http: httpx.AsyncClient) -> None:
    upload = await storage.presign_upload(
        "up/a.png", size=len(PNG), content_type="image/png", expires_in=300
    )
    assert upload.method == "POST"
    assert upload.fields["Content-Type"] == "image/png"
    assert upload.expires_at - datetime.now(UTC) <= timedelta(seconds=300)
    assert upload.expires_at - datetime.now(UTC) > timedelta(seconds=240)

    response = await browser_upload(http, upload, PNG)

    assert response.status_code in (HTTPStatus.NO_CONTENT, HTTPStatus.OK, HTTPStatus.CREATED)
    info = await storage.head("up/a.png")
    assert info is not None
    assert (info.size, info.content_type) == (len(PNG), "image/png")
    assert await storage.get("up/a.png") == PNG


@pytest.mark.parametrize("delta", [1, -1])
async def test_presigned_upload_of_another_size_is_refused(
    storage: Storage, delta: int, http: httpx.AsyncClient
) -> None:
    upload = await storage.presign_upload(
        "up/a.png", size=len(PNG), content_type="image/png", expires_in=300
    )
    body = PNG + b"!" if delta > 0 else PNG[:-1]

    response = await browser_upload(http, upload, body)

    assert HTTPStatus.BAD_REQUEST <= response.status_code < HTTPStatus.INTERNAL_SERVER_ERROR
    assert await storage.head("up/a.png") is None


async def test_presigned_upload_much_larger_than_declared_is_refused(
    storage: Storage, http: httpx.AsyncClient
) -> None:
    upload = await storage.presign_upload(
        "up/big", size=10, content_type="image/png", expires_in=60
    )

    response = await browser_upload(http, upload, PNG * 64)

    assert HTTPStatus.BAD_REQUEST <= response.status_code < HTTPStatus.INTERNAL_SERVER_ERROR
    assert await storage.head("up/big") is None


async def test_presigned_upload_of_another_type_is_refused(
    storage: Storage, http: httpx.AsyncClient
) -> None:
    upload = await storage.presign_upload(
        "up/a.png", size=len(PNG), content_type="image/png", expires_in=300
    )

    response = await browser_upload(http, upload, PNG, **{"Content-Type": "text/html"})

    assert HTTPStatus.BAD_REQUEST <= response.status_code < HTTPStatus.INTERNAL_SERVER_ERROR
    assert await storage.head("up/a.png") is None


async def test_presigned_upload_to_another_key_is_refused(
    storage: Storage, http: httpx.AsyncClient
) -> None:
    upload = await storage.presign_upload(
        "up/mine.png", size=len(PNG), content_type="image/png", expires_in=300
    )

    response = await browser_upload(http, upload, PNG, key="up/someone-elses.png")

    assert HTTPStatus.BAD_REQUEST <= response.status_code < HTTPStatus.INTERNAL_SERVER_ERROR
    assert await storage.head("up/someone-elses.png") is None
    assert await storage.head("up/mine.png") is None


async def test_presign_refuses_bad_arguments(storage: Storage) -> None:
    with pytest.raises(ValueError):
        await storage.presign_upload("a/b", size=-1, content_type="image/png", expires_in=60)
    with pytest.raises(ValueError):
        await storage.presign_upload("a/b", size=1, content_type="", expires_in=60)
    with pytest.raises(ValueError):
        await storage.presign_download("a/b", expires_in=0)
    with pytest.raises(ValueError):
        await storage.presign_download("a/b", expires_in=8 * 24 * 3600)


async def test_presigned_download(storage: Storage, http: httpx.AsyncClient) -> None:
    await storage.put("dl/report.pdf", PNG, "application/pdf")

    url = await storage.presign_download("dl/report.pdf", expires_in=60)
    response = await http.get(url)

    assert response.status_code == HTTPStatus.OK
    assert response.content == PNG
    assert response.headers["content-type"] == "application/pdf"


async def test_presigned_download_names_the_file(storage: Storage, http: httpx.AsyncClient) -> None:
    await storage.put("dl/x", b"%PDF-1.7", "application/pdf")

    url = await storage.presign_download("dl/x", expires_in=60, filename='Résumé "final".pdf')
    response = await http.get(url)

    assert response.status_code == HTTPStatus.OK
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''R%C3%A9sum%C3%A9%20%22final%22.pdf" in disposition


async def test_presigned_url_without_its_signature_is_refused(
    storage: Storage, http: httpx.AsyncClient
) -> None:
    await storage.put("dl/secret", b"secret", "text/plain")
    url = await storage.presign_download("dl/secret", expires_in=60)

    response = await http.get(url.split("?")[0])

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert response.content != b"secret"


@pytest.fixture
async def public_storage(
    s3_server: S3Server, storage_config: StorageConfig
) -> AsyncIterator[Storage]:
    """A Storage on the test's bucket whose clients reach the server by another name."""
    public = Storage(s3_server.config(storage_config.bucket, public_url=other_name(s3_server.url)))
    try:
        yield public
    finally:
        public.close()


async def test_presigned_urls_use_the_public_endpoint(
    s3_server: S3Server, storage: Storage, public_storage: Storage, http: httpx.AsyncClient
) -> None:
    public_host = urlsplit(other_name(s3_server.url)).hostname
    assert public_host != urlsplit(s3_server.url).hostname
    await public_storage.put("pub/a.png", PNG, "image/png")

    download = await public_storage.presign_download("pub/a.png", expires_in=60)
    upload = await public_storage.presign_upload(
        "pub/b.png", size=len(PNG), content_type="image/png", expires_in=60
    )

    assert urlsplit(download).hostname == public_host
    assert urlsplit(upload.url).hostname == public_host
    got = await http.get(download)
    assert got.status_code == HTTPStatus.OK
    assert got.content == PNG
    uploaded = await browser_upload(http, upload, PNG)
    assert uploaded.status_code < HTTPStatus.BAD_REQUEST
    assert await storage.get("pub/b.png") == PNG
    # The internal name still works for URLs signed for it.
    internal = await http.get(await storage.presign_download("pub/a.png", expires_in=60))
    assert internal.content == PNG


# --------------------------------------------------------------------------- outages


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedS3]:
    """An embedded S3 server of this test's own, which it may stop."""
    with start_seaweedfs(tmp_path) as server:
        yield server


async def test_stopped_server_is_unavailable_quickly(own_server: EmbeddedS3) -> None:
    store = Storage(
        StorageConfig(
            url=own_server.url,
            bucket="outage",
            access_key=own_server.access_key,
            secret_key=own_server.secret_key,
        )
    )
    try:
        await store.ensure_bucket()
        await store.put("a/b", b"x", "text/plain")
        await asyncio.to_thread(own_server.stop)

        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get("a/b"),
            lambda: store.head("a/b"),
            lambda: store.put("a/c", b"y", "text/plain"),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as raised:
                await call()
            assert time.monotonic() - started < UNAVAILABLE_WITHIN_SECONDS
            # Escaping a servicer, it becomes UNAVAILABLE, which clients retry.
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        store.close()


async def test_nothing_listening_is_unavailable() -> None:
    store = Storage(
        StorageConfig(
            url=f"http://127.0.0.1:{free_port()}", bucket="b", access_key="k", secret_key="s"
        )
    )
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await store.delete_prefix("users/")
        assert time.monotonic() - started < UNAVAILABLE_WITHIN_SECONDS
    finally:
        store.close()
