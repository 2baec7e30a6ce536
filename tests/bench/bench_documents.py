"""ListDocuments with 100 000 documents of one user: first page vs page 50, and search.

Keyset pages read the same index range wherever they start, so a deep page should cost
what the first one does. The document service runs as its own process on the embedded
engines (or FOLIO_DATABASE_URL); pages are read over gRPC, one call at a time.
"""

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import psycopg
import uvloop

from folio.document.v1 import document_service_pb2, document_service_pb2_grpc
from libs.config import Settings
from libs.devstack import backing_services, migration_targets
from libs.ids import new_id
from libs.migrations import migrate_all
from libs.secrets import load_secrets
from libs.tokens import sign_access_token
from tests.fixtures.stack import Stack

DOCUMENTS = 100_000
PAGE_SIZE = 50
DEEP_PAGE = 50
CALLS = 200
WORDS = "harbour lantern meadow quartz saffron timber velvet willow".split()


def seed(database_url: str, user_id: str) -> None:
    """One user's documents, inserted in one statement; each names a few words."""
    words = "ARRAY[" + ", ".join(f"'{w}'" for w in WORDS) + "]"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO documents.documents"
            " (id, user_id, title, content, revision, etag, word_count, created_at, updated_at)"
            " SELECT '01' || lpad(i::text, 24, '0'), %s, 'Document ' || i,"
            f" 'Notes about ' || ({words})[1 + i %% 8] || ' and ' || ({words})[1 + i %% 5]"
            " || ' number ' || i, 1, md5(i::text), 6,"
            " now() - i * interval '1 second', now() - i * interval '1 second'"
            " FROM generate_series(1, %s) AS i",
            (user_id, DOCUMENTS),
        )
        conn.execute("ANALYZE documents.documents")


async def timed(
    stub: "document_service_pb2_grpc.DocumentServiceAsyncStub",
    request: document_service_pb2.ListDocumentsRequest,
    metadata: tuple[tuple[str, str], ...],
) -> list[float]:
    latencies = []
    for _ in range(CALLS):
        started = time.perf_counter()
        reply = await stub.ListDocuments(request, metadata=metadata)
        latencies.append(time.perf_counter() - started)
        assert reply.documents
    return latencies


async def measure(address: str, token: str) -> dict[str, list[float]]:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = document_service_pb2_grpc.DocumentServiceStub(channel)
        first = document_service_pb2.ListDocumentsRequest(page_size=PAGE_SIZE)
        token_of_deep = ""
        for _ in range(DEEP_PAGE - 1):
            reply = await stub.ListDocuments(
                document_service_pb2.ListDocumentsRequest(
                    page_size=PAGE_SIZE, page_token=token_of_deep
                ),
                metadata=metadata,
            )
            token_of_deep = reply.next_page_token
        deep = document_service_pb2.ListDocumentsRequest(
            page_size=PAGE_SIZE, page_token=token_of_deep
        )
        search = document_service_pb2.ListDocumentsRequest(page_size=PAGE_SIZE, q="quartz")
        results: dict[str, list[float]] = {"first": [], "deep": [], "search": []}
        # Alternating rounds, so both pages see the same machine.
        for _ in range(2):
            results["first"] += await timed(stub, first, metadata)
            results["deep"] += await timed(stub, deep, metadata)
            results["search"] += await timed(stub, search, metadata)
        return results


def ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] * 1000


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="folio-bench-documents-"))
    try:
        with backing_services(Settings(data_dir=workdir / "engines")) as urls:
            database_url = urls["FOLIO_DATABASE_URL"]
            migrate_all(database_url, migration_targets())
            user_id = new_id()
            started = time.perf_counter()
            seed(database_url, user_id)
            print(f"seeded {DOCUMENTS} documents in {time.perf_counter() - started:.1f} s")
            stack = Stack(workdir, database_url, urls["FOLIO_REDIS_URL"], urls)
            try:
                stack.start_service("document")
                settings = stack.settings
                token = sign_access_token(
                    load_secrets(settings).active_key(),
                    issuer=settings.token_issuer,
                    audience=settings.token_audience,
                    user_id=user_id,
                    session_id=new_id(),
                )
                results = uvloop.run(measure(stack.address("document"), token))
            finally:
                stack.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"ListDocuments, {DOCUMENTS} documents, page size {PAGE_SIZE}, {2 * CALLS} calls each")
    for name, label in (
        ("first", "first page"),
        ("deep", f"page {DEEP_PAGE}"),
        ("search", "q=quartz"),
    ):
        values = results[name]
        print(f"  {label:<11} p50 {ms(values, 0.5):6.2f} ms  p99 {ms(values, 0.99):6.2f} ms")
    ratio = ms(results["deep"], 0.99) / ms(results["first"], 0.99)
    print(f"  page {DEEP_PAGE} / first page p99: {ratio:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
