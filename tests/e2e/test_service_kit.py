"""A service added as a plugin joins account deletion without any edit to Folio's code."""

import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from folio.user.v1 import user_service_pb2, user_service_pb2_grpc
from libs.ids import new_id
from libs.service import purge_targets, registered_services
from tests.fixtures.google_issuer import GoogleIssuer
from tests.fixtures.s3 import S3Server
from tests.fixtures.stack import Stack, running_stack

PLUGIN_SOURCE = Path(__file__).parent / "kit_plugin"


def install_plugin(site: Path) -> None:
    """Register folio_notes the way an installed package does: entry points in dist-info."""
    dist_info = site / "folio_notes-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: folio-notes\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[folio.services]\nnotes = folio_notes.server:SERVICE\n"
    )


@pytest.fixture(scope="module")
def plugin_stack(
    postgres_server_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    google_issuer: GoogleIssuer,
    s3_server: S3Server,
) -> Iterator[Stack]:
    site = tmp_path_factory.mktemp("site")
    install_plugin(site)
    paths = [str(PLUGIN_SOURCE), str(site)]
    sys.path[:0] = paths
    try:
        assert "notes" in registered_services()
        pythonpath = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])
        env = {
            "PYTHONPATH": pythonpath.rstrip(os.pathsep),
            **google_issuer.stack_env(),
            **s3_server.env(f"folio-e2e-kit-{secrets.token_hex(4)}"),
        }
        with running_stack(
            tmp_path_factory.mktemp("kit-stack"),
            postgres_server_url,
            redis_url,
            env,
            prefix="folio_e2e_kit",
            gateway=False,
        ) as stack:
            yield stack
    finally:
        for path in paths:
            sys.path.remove(path)


def wait_for_task(database_url: str, task_id: str, within: float = 60) -> dict[str, object]:
    """The task's row once it is final, read from the tasks table (the truth)."""
    deadline = time.monotonic() + within
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT status, result FROM tasks.tasks WHERE id = %s", (task_id,)
            ).fetchone()
            if row is not None and row[0] in ("completed", "failed", "cancelled"):
                return {"status": row[0], "result": row[1]}
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} is still {row and row[0]}")
            time.sleep(0.2)


async def test_account_deletion_purges_a_service_that_only_registered(
    plugin_stack: Stack,
) -> None:
    stack = plugin_stack
    assert [s.name for s in purge_targets()] == ["auth", "document", "llm", "notes", "task", "user"]
    database_url = stack.env["FOLIO_DATABASE_URL"]
    token = stack.mint_token("plugin-user@example.com")
    async with grpc.aio.insecure_channel(stack.address("user")) as channel:
        users = user_service_pb2_grpc.UserServiceStub(channel)
        metadata = (("authorization", f"Bearer {token}"),)
        me = await users.GetMe(user_service_pb2.GetMeRequest(), metadata=metadata)
        user_id, bystander = me.user.id, new_id()
        with psycopg.connect(database_url, autocommit=True) as conn:
            for owner in (user_id, user_id, bystander):
                conn.execute(
                    "INSERT INTO notes.notes (id, user_id, body) VALUES (%s, %s, 'a note')",
                    (new_id(), owner),
                )
        queued = await users.DeleteMe(user_service_pb2.DeleteMeRequest(), metadata=metadata)

    task = wait_for_task(database_url, queued.task_id)
    assert task["status"] == "completed", task
    result: Any = task["result"]
    assert result["success"] is True, result
    purged = result["result"]["purged"]
    assert purged["notes"] == 2 and purged["user"] == 1, purged
    with psycopg.connect(database_url) as conn:
        left = conn.execute("SELECT user_id, count(*) FROM notes.notes GROUP BY user_id").fetchall()
    assert left == [(bystander, 1)]
