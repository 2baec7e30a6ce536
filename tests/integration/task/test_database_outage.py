"""The tasks database out of reach: the worker gives messages back instead of losing them."""

import asyncio

import psycopg
import pytest
from psycopg import sql

from libs.ids import new_id
from tests.integration.task.conftest import TaskServiceUnderTest, Worker

pytestmark = pytest.mark.asyncio


def allow_connections(server_url: str, database_url: str, allowed: bool) -> None:
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(str(name)), sql.Literal(allowed)
            )
        )


async def test_a_task_delivered_while_the_database_refuses_connections_runs_later(
    task_service: TaskServiceUnderTest, worker: Worker, postgres_server_url: str
) -> None:
    database_url = task_service.settings.database_url or ""
    user = new_id()
    worker.stop()
    queued = await task_service.enqueue("test.echo", user, {"value": "late"})
    allow_connections(postgres_server_url, database_url, False)
    try:
        worker.start()
        for _ in range(600):
            if "cannot reach the tasks database, requeueing" in worker.log():
                break
            await asyncio.sleep(0.1)
    finally:
        allow_connections(postgres_server_url, database_url, True)
    done = (await task_service.wait_for(queued.task.task_id, user, {"completed", "failed"})).task
    assert done.status == "completed" and done.attempts == 1
    assert f"[{done.task_id}] cannot reach the tasks database" in worker.log()
