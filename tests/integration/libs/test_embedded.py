"""Embedded PostgreSQL and Redis, and the URL conversions for their clients."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import sqlalchemy
from kombu.connection import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from libs.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    start_postgres,
    start_redis,
)
from libs.urls import celery_broker_url, sqlalchemy_url
from tests.fixtures.engines import postgres_data_dir


def process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs; a zombie awaiting its reaper counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A data dir for embedded postgres (not under tmp_path: see postgres_data_dir)."""
    with postgres_data_dir() as path:
        yield path


@pytest.fixture
def postgres_in(pg_dir: Path) -> Iterator[Callable[[Path], EmbeddedPostgres]]:
    """start_postgres, with every server it started stopped before pg_dir goes."""
    started: list[EmbeddedPostgres] = []

    def start(data_dir: Path) -> EmbeddedPostgres:
        assert data_dir.is_relative_to(pg_dir), "keep clusters where the teardown finds them"
        started.append(start_postgres(data_dir))
        return started[-1]

    yield start
    for postgres in started:
        postgres.stop()


@pytest.fixture
def redis_in() -> Iterator[Callable[[Path], EmbeddedRedis]]:
    """start_redis, with every server it started stopped after the test."""
    started: list[EmbeddedRedis] = []

    def start(data_dir: Path) -> EmbeddedRedis:
        started.append(start_redis(data_dir))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def select_one(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_accepts_connections(pg_dir: Path, postgres_in) -> None:
    postgres = postgres_in(pg_dir)

    assert postgres.url.startswith("postgresql://")
    assert "?host=" in postgres.url
    assert select_one(postgres.url) == 1


def test_postgres_stop_leaves_no_process(pg_dir: Path, postgres_in) -> None:
    postgres = postgres_in(pg_dir)
    pid = postmaster_pid(pg_dir / "pgdata")
    assert not process_gone(pid)

    postgres.stop()
    postgres.stop()  # idempotent

    assert wait_gone(pid)
    assert not (pg_dir / "pgdata" / "postmaster.pid").exists()
    with pytest.raises(psycopg.OperationalError):
        select_one(postgres.url)


def test_postgres_restart_keeps_data(pg_dir: Path, postgres_in) -> None:
    postgres = postgres_in(pg_dir)
    with psycopg.connect(postgres.url) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    postgres.stop()

    again = postgres_in(pg_dir)

    with psycopg.connect(again.url) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("still here",)]


def test_postgres_second_start_reuses_running_server(pg_dir: Path, postgres_in) -> None:
    first = postgres_in(pg_dir)

    second = postgres_in(pg_dir)

    assert second.pid == first.pid
    assert select_one(second.url) == 1


def test_postgres_starts_after_a_killed_run(pg_dir: Path, postgres_in) -> None:
    postgres = postgres_in(pg_dir)
    with psycopg.connect(postgres.url) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('committed')")
    os.kill(postgres.pid, signal.SIGKILL)
    # Gone, or a zombie nobody reaps yet, which pgserver alone would take for a live server.
    assert wait_gone(postgres.pid)

    again = postgres_in(pg_dir)

    assert again.pid != postgres.pid
    with psycopg.connect(again.url) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("committed",)]


def test_postgres_left_running_by_a_killed_process_is_reused_then_stopped(
    pg_dir: Path, postgres_in
) -> None:
    # A `folio dev` that dies without cleanup leaves postgres running and its pid in
    # pgserver's handle list.
    script = (
        "import os, sys; from pathlib import Path; from libs.embedded import start_postgres; "
        "print(start_postgres(Path(sys.argv[1])).pid, flush=True); os._exit(0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(pg_dir)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    orphan_pid = int(result.stdout.split()[-1])
    assert not process_gone(orphan_pid)

    postgres = postgres_in(pg_dir)

    assert postgres.pid == orphan_pid
    assert select_one(postgres.url) == 1
    postgres.stop()
    assert wait_gone(orphan_pid)


def test_postgres_ignores_pid_file_naming_another_process(pg_dir: Path, postgres_in) -> None:
    postgres_in(pg_dir).stop()
    pgdata = pg_dir / "pgdata"
    # After a reboot the pid in a stale postmaster.pid can belong to anything.
    with subprocess.Popen(["sleep", "60"]) as unrelated:
        try:
            (pgdata / "postmaster.pid").write_text(
                f"{unrelated.pid}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n  0  0\nready   \n"
            )

            again = postgres_in(pg_dir)

            assert again.pid != unrelated.pid
            assert select_one(again.url) == 1
            assert unrelated.poll() is None  # left alone
        finally:
            unrelated.kill()


def test_postgres_in_a_long_data_dir(pg_dir: Path, postgres_in) -> None:
    data_dir = pg_dir / ("d" * 60) / ("e" * 60)
    # Too long for a unix socket path (108 bytes on Linux) inside the data dir.
    assert len(str(data_dir / "pgdata" / ".s.PGSQL.5432")) > 108

    postgres = postgres_in(data_dir)

    assert select_one(postgres.url) == 1


def test_postgres_in_a_data_dir_with_spaces(pg_dir: Path, postgres_in) -> None:
    postgres = postgres_in(pg_dir / "My Projects" / "folio data")

    assert select_one(postgres.url) == 1


def test_sqlalchemy_reaches_the_server(postgres_server_url: str) -> None:
    engine = sqlalchemy.create_engine(sqlalchemy_url(postgres_server_url))
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- Redis


def test_redis_ping_set_get(tmp_path: Path, redis_in) -> None:
    server = redis_in(tmp_path)

    assert server.url.startswith("unix:///")
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
    finally:
        client.close()


def test_redis_stop_leaves_no_process(tmp_path: Path, redis_in) -> None:
    server = redis_in(tmp_path)
    other_client = redis.Redis.from_url(server.url)
    other_client.ping()  # another client still connected must not keep it alive

    server.stop()
    server.stop()  # idempotent

    assert wait_gone(server.pid)
    other_client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 0)).ping()


def test_redis_restart_keeps_data(tmp_path: Path, redis_in) -> None:
    server = redis_in(tmp_path)
    with redis.Redis.from_url(server.url) as client:
        client.set("kept", "yes")
    server.stop()
    assert (tmp_path / "redis.rdb").exists()

    again = redis_in(tmp_path)

    with redis.Redis.from_url(again.url) as client:
        assert client.get("kept") == b"yes"


def test_redis_starts_after_a_killed_run(tmp_path: Path, redis_in) -> None:
    server = redis_in(tmp_path)
    os.kill(server.pid, signal.SIGKILL)
    assert wait_gone(server.pid)

    again = redis_in(tmp_path)

    assert again.pid != server.pid
    with redis.Redis.from_url(again.url) as client:
        assert client.ping()


def test_redis_db_url_is_isolated(redis_db_url: str, redis_url: str) -> None:
    with redis.Redis.from_url(redis_db_url) as client:
        assert client.dbsize() == 0
        client.set("mine", "1")
    with redis.Redis.from_url(redis_url) as base:
        assert base.get("mine") is None


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("unix:///tmp/x/redis.socket", "redis+socket:///tmp/x/redis.socket"),
        ("unix:///tmp/x/redis.socket?db=3", "redis+socket:///tmp/x/redis.socket?virtual_host=3"),
        (
            "unix://:secret@/tmp/x/redis.socket?db=2&health_check_interval=5",
            "redis+socket://:secret@/tmp/x/redis.socket?virtual_host=2&health_check_interval=5",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("rediss://h:6380/1", "rediss://h:6380/1"),
    ],
)
def test_celery_broker_url(given: str, expected: str) -> None:
    assert celery_broker_url(given) == expected


def test_celery_broker_url_reaches_the_chosen_db(tmp_path: Path, redis_in) -> None:
    server = redis_in(tmp_path)

    broker_url = celery_broker_url(f"{server.url}?db=3")
    with Connection(broker_url) as connection:  # type: ignore[no-untyped-call]
        connection.default_channel.client.set("via-kombu", "1")

    with redis.Redis.from_url(f"{server.url}?db=3") as client:
        assert client.get("via-kombu") == b"1"
    with redis.Redis.from_url(server.url) as client:
        assert client.get("via-kombu") is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u@h/db?sslmode=require", "postgresql+psycopg://u@h/db?sslmode=require"),
        (
            "postgresql://postgres@/postgres?host=/tmp/pg",
            "postgresql+psycopg://postgres@/postgres?host=/tmp/pg",
        ),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_sqlalchemy_url(given: str, expected: str) -> None:
    assert sqlalchemy_url(given) == expected
