"""Tasks end to end, through the REST gateway, on a stack with a Redis of its own.

The stack's Redis is a redis-server these tests start and stop, so a broker outage can be
staged without touching the machine's shared Redis.
"""

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from libs.devstack import migration_targets
from libs.migrations import migrate_all
from libs.service import registered_services
from tests.fixtures.engines import replace_database
from tests.fixtures.processes import wait_until
from tests.fixtures.stack import Stack
from tests.integration.task.redis_server import RedisServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("broker"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def task_stack(
    postgres_server_url: str,
    broker: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    """Every service, the gateway and a worker, on a fresh database and the broker above."""
    name = f"folio_e2e_tasks_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database_url = replace_database(postgres_server_url, name)
    migrate_all(database_url, migration_targets())
    running = Stack(
        tmp_path_factory.mktemp("task-stack"),
        database_url,
        broker.url,
        request.getfixturevalue("s3_server").env(name.replace("_", "-")),
    )
    issuer = _optional_fixture(request, "google_issuer")
    if issuer is not None:
        # The auth service signs users in against the local Google stand-in.
        running.env.update(issuer.stack_env())
    running.env.update(
        {"FOLIO_TASK_RETRY_BACKOFF_SECONDS": "0.5", "FOLIO_TASK_RETRY_BACKOFF_MAX_SECONDS": "2"}
    )
    try:
        for service in running.services:
            running.start_service(service)
        running.start_service("gateway")
        running.start_service("worker")
        wait_until(lambda: _routed(running), 30, "the gateway's task and user routes")
        yield running
    finally:
        running.stop()
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _routed(stack: Stack) -> bool:
    """Whether the gateway has the routes these tests use (it reads them by reflection)."""
    for path in ("/api/users/me", "/tasks/01JAAAAAAAAAAAAAAAAAAAAAAA"):
        reply = httpx.get(f"{stack.gateway_url}{path}")
        if reply.status_code != 401:
            return False
    return True


def _optional_fixture(request: pytest.FixtureRequest, name: str) -> Any:
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return None


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def user_id_of(stack: Stack, token: str) -> str:
    reply = httpx.get(f"{stack.gateway_url}/api/users/me", headers=bearer(token))
    assert reply.status_code == 200, reply.text
    user_id: str = reply.json()["id"]
    return user_id


def get_task(stack: Stack, token: str, task_id: str, wait: int = 0) -> httpx.Response:
    query = f"?wait_seconds={wait}" if wait else ""
    return httpx.get(
        f"{stack.gateway_url}/tasks/{task_id}{query}",
        headers={**bearer(token), "x-request-timeout": str(wait + 10)},
        timeout=wait + 15,
    )


def user_rows(stack: Stack, user_id: str) -> dict[str, int]:
    """Rows that name the user, in every service's schema."""
    counts: dict[str, int] = {}
    with psycopg.connect(stack.env["FOLIO_DATABASE_URL"]) as conn:
        columns = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = ANY(%s) AND column_name IN ('user_id', 'id')"
            " AND (column_name = 'user_id' OR table_name = 'users')",
            ([s.schema for s in registered_services().values() if s.schema],),
        ).fetchall()
        for schema, table, column in columns:
            count = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{} WHERE {} = %s").format(
                    sql.Identifier(schema), sql.Identifier(table), sql.Identifier(column)
                ),
                (user_id,),
            ).fetchone()
            assert count is not None
            counts[f"{schema}.{table}"] = count[0]
        # Not even the deletion's receipt may mention the user, in any column.
        mentions = conn.execute(
            "SELECT count(*) FROM tasks.tasks t WHERE t::text LIKE %s", (f"%{user_id}%",)
        ).fetchone()
        assert mentions is not None
        counts["tasks.tasks (any column)"] = mentions[0]
    return counts


@contextlib.contextmanager
def first_purge_held(stack: Stack) -> Iterator[Callable[[], bool]]:
    """Hold account deletions at their first step while the block runs.

    The first purge is the auth service's, which signs the user out; until it runs, the
    owner's token still works. Yields a check: is a deletion waiting there now?
    """
    assert "auth" in stack.services
    database_url = stack.env["FOLIO_DATABASE_URL"]
    with (
        psycopg.connect(database_url) as holder,
        psycopg.connect(database_url, autocommit=True) as observer,
    ):
        # SHARE conflicts with the UPDATE that revokes the user's sessions, and with
        # nothing these tests do otherwise.
        holder.execute("LOCK TABLE auth.sessions IN SHARE MODE")

        def waiting() -> bool:
            row = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query ILIKE %s",
                ("UPDATE auth.sessions%",),
            ).fetchone()
            return row is not None and row[0] > 0

        try:
            yield waiting
        finally:
            holder.rollback()


def test_deleting_an_account_runs_as_a_task_and_leaves_nothing_behind(
    task_stack: Stack,
) -> None:
    stack = task_stack
    token = stack.mint_token("leaving@example.com")
    user_id = user_id_of(stack, token)
    assert user_rows(stack, user_id)["users.users"] == 1
    # Held at its first purge, the task is observably pending or running, and the owner's
    # final long poll (authorized before the purge signs them out) starts in time.
    with first_purge_held(stack) as deletion_waiting:
        queued = httpx.delete(f"{stack.gateway_url}/api/users/me", headers=bearer(token))
        assert queued.status_code == 202, queued.text
        body = queued.json()
        assert body == {"task_id": body["task_id"], "status": "pending"}
        task_id = body["task_id"]
        assert len(task_id) == 26
        # Asking again returns the same deletion.
        again = httpx.delete(f"{stack.gateway_url}/api/users/me", headers=bearer(token))
        assert again.status_code == 202 and again.json()["task_id"] == task_id

        seen = get_task(stack, token, task_id)
        assert seen.status_code == 200
        assert seen.json()["status"] in ("pending", "running")
        while seen.json()["status"] == "pending":
            seen = get_task(stack, token, task_id, wait=5)
            assert seen.status_code == 200
        assert seen.json()["status"] == "running"
        wait_until(deletion_waiting, 30, "the first purge")

        final: list[httpx.Response] = []
        poll = threading.Thread(target=lambda: final.append(get_task(stack, token, task_id, 20)))
        poll.start()
        # The long poll is a local round trip; give it ample time to be waiting.
        time.sleep(0.5)
    poll.join(timeout=30)
    assert final and final[0].status_code == 200, final and final[0].text
    task = final[0].json()
    assert task["status"] == "completed", task
    assert task["result"]["success"] is True
    assert task["kind"] == "user.delete" and task["progress"] == 100

    assert all(count == 0 for count in user_rows(stack, user_id).values()), user_rows(
        stack, user_id
    )
    for path in ("/api/users/me", f"/tasks/{task_id}", "/api/tasks"):
        refused = httpx.get(f"{stack.gateway_url}{path}", headers=bearer(token))
        assert refused.status_code == 401, (path, refused.text)
        assert refused.headers["www-authenticate"].startswith("Bearer")


def test_another_users_task_is_not_found_exactly_like_an_unknown_one(task_stack: Stack) -> None:
    stack = task_stack
    owner = stack.mint_token("owner@example.com")
    other = stack.mint_token("other@example.com")
    with first_purge_held(stack):
        # The owner's deletion stays under way, the owner signed in, while we look.
        queued = httpx.delete(f"{stack.gateway_url}/api/users/me", headers=bearer(owner))
        task_id = queued.json()["task_id"]
        foreign = get_task(stack, other, task_id)
        unknown = get_task(stack, other, "01JAAAAAAAAAAAAAAAAAAAAAAA")
        malformed = get_task(stack, other, "not-a-task")
        assert foreign.status_code == unknown.status_code == malformed.status_code == 404
        assert foreign.json() == unknown.json() == malformed.json()
        assert foreign.json()["error"]["status"] == "NOT_FOUND"
        cancel = httpx.post(f"{stack.gateway_url}/tasks/{task_id}/cancel", headers=bearer(other))
        assert cancel.status_code == 404 and cancel.json() == unknown.json()
        theirs = httpx.get(f"{stack.gateway_url}/api/tasks", headers=bearer(other))
        assert theirs.status_code == 200
        assert theirs.json().get("tasks", []) == []
        mine = httpx.get(f"{stack.gateway_url}/api/tasks", headers=bearer(owner))
        assert [t["task_id"] for t in mine.json()["tasks"]] == [task_id]
        # Read at /api/tasks/{id}, and at the original /tasks/{id} as well.
        primary = httpx.get(f"{stack.gateway_url}/api/tasks/{task_id}", headers=bearer(owner))
        original = httpx.get(f"{stack.gateway_url}/tasks/{task_id}", headers=bearer(owner))
        assert primary.status_code == original.status_code == 200
        assert primary.json()["task_id"] == original.json()["task_id"] == task_id
        assert get_task(stack, owner, task_id).status_code == 200


def test_a_deletion_queued_while_redis_is_down_runs_once_it_is_back(
    task_stack: Stack, broker: RedisServer
) -> None:
    stack = task_stack
    token = stack.mint_token("outage@example.com")
    user_id = user_id_of(stack, token)
    broker.stop()
    try:
        queued = httpx.delete(f"{stack.gateway_url}/api/users/me", headers=bearer(token))
        assert queued.status_code == 202, queued.text
        task_id = queued.json()["task_id"]
        assert get_task(stack, token, task_id).json()["status"] == "pending"
        with psycopg.connect(stack.env["FOLIO_DATABASE_URL"]) as conn:
            waiting = conn.execute(
                "SELECT count(*) FROM tasks.outbox WHERE task_id = %s", (task_id,)
            ).fetchone()
        assert waiting == (1,)
    finally:
        broker.start()
    final = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        reply = get_task(stack, token, task_id, wait=5)
        if reply.status_code == 401:  # the deletion completed and revoked the token
            break
        final = reply.json()
        if final["status"] in ("completed", "failed", "cancelled"):
            break
    assert final is None or final["status"] in ("running", "completed"), final
    wait_until(lambda: user_rows(stack, user_id)["users.users"] == 0, 60, "the deletion")
    with psycopg.connect(stack.env["FOLIO_DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT status, attempts, user_id FROM tasks.tasks WHERE id = %s", (task_id,)
        ).fetchone()
    assert row == ("completed", 1, None)
