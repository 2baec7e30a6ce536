"""The migration runner against a real PostgreSQL database."""

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from libs.migrations import MigrationError, migrate, migrate_all

SCHEMA = "things"


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def query(database_url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(statement).fetchall()


def applied(database_url: str, schema: str = SCHEMA) -> list[str]:
    return [
        row[0]
        for row in query(
            database_url, f"SELECT filename FROM {schema}.schema_migrations ORDER BY filename"
        )
    ]


def table_exists(database_url: str, name: str) -> bool:
    return query(database_url, f"SELECT to_regclass('{name}')")[0][0] is not None


def log_migrations(directory: Path) -> list[str]:
    """Files that record, in a table, the order they ran in; returns them in apply order."""
    write(
        directory,
        "2025_12_31_5_create_log.sql",
        "CREATE TABLE log (id serial PRIMARY KEY, name text NOT NULL);\n"
        "INSERT INTO log (name) VALUES ('2025_12_31_5');\n",
    )
    for n in (10, 2, 1):
        write(
            directory,
            f"2026_01_01_{n}_step_{n}.sql",
            "-- 100% plain SQL, several statements\n"
            f"INSERT INTO log (name) VALUES ('2026_01_01_{n}');\n"
            f"INSERT INTO log (name) VALUES ('again_{n}');\n",
        )
    return [
        "2025_12_31_5_create_log.sql",
        "2026_01_01_1_step_1.sql",
        "2026_01_01_2_step_2.sql",
        "2026_01_01_10_step_10.sql",
    ]


def test_applies_files_in_date_then_numeric_order(database_url: str, tmp_path: Path) -> None:
    expected = log_migrations(tmp_path)

    assert migrate(database_url, SCHEMA, tmp_path) == expected

    names = [row[0] for row in query(database_url, "SELECT name FROM things.log ORDER BY id")]
    assert [n for n in names if not n.startswith("again")] == [
        "2025_12_31_5",
        "2026_01_01_1",
        "2026_01_01_2",
        "2026_01_01_10",
    ]
    assert applied(database_url) == sorted(expected)
    # search_path was the schema: unqualified names landed there, not in public.
    assert table_exists(database_url, "things.log")
    assert not table_exists(database_url, "public.log")


def test_records_checksum_and_time(database_url: str, tmp_path: Path) -> None:
    import hashlib

    path = write(tmp_path, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")

    migrate(database_url, SCHEMA, tmp_path)

    [(checksum, has_time)] = query(
        database_url, "SELECT checksum, applied_at IS NOT NULL FROM things.schema_migrations"
    )
    assert checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert has_time


def test_second_run_applies_nothing(database_url: str, tmp_path: Path) -> None:
    log_migrations(tmp_path)
    migrate(database_url, SCHEMA, tmp_path)

    assert migrate(database_url, SCHEMA, tmp_path) == []
    assert query(database_url, "SELECT count(*) FROM things.log") == [(7,)]


def test_later_run_applies_only_new_files(database_url: str, tmp_path: Path) -> None:
    log_migrations(tmp_path)
    migrate(database_url, SCHEMA, tmp_path)
    write(tmp_path, "2026_01_02_1_more.sql", "INSERT INTO log (name) VALUES ('more');\n")

    assert migrate(database_url, SCHEMA, tmp_path) == ["2026_01_02_1_more.sql"]
    assert query(database_url, "SELECT count(*) FROM things.log WHERE name = 'more'") == [(1,)]


def test_empty_directory_creates_schema_and_table(database_url: str, tmp_path: Path) -> None:
    assert migrate(database_url, SCHEMA, tmp_path) == []
    assert applied(database_url) == []


def test_concurrent_runners_apply_each_file_once(database_url: str, tmp_path: Path) -> None:
    # Slow files widen the window in which an unlocked second runner would also apply them.
    write(
        tmp_path,
        "2026_01_01_1_create_log.sql",
        "CREATE TABLE log (name text PRIMARY KEY);\nSELECT pg_sleep(0.3);\n"
        "INSERT INTO log VALUES ('1');\n",
    )
    write(
        tmp_path,
        "2026_01_01_2_add.sql",
        "SELECT pg_sleep(0.3);\nINSERT INTO log VALUES ('2');\n",
    )
    runners = 4
    barrier = threading.Barrier(runners)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(database_url, SCHEMA, tmp_path))
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(results) == runners
    assert sorted(name for result in results for name in result) == [
        "2026_01_01_1_create_log.sql",
        "2026_01_01_2_add.sql",
    ]
    assert query(database_url, "SELECT name FROM things.log ORDER BY name") == [("1",), ("2",)]
    assert applied(database_url) == ["2026_01_01_1_create_log.sql", "2026_01_01_2_add.sql"]


def test_edited_applied_file_is_refused(database_url: str, tmp_path: Path) -> None:
    edited = write(tmp_path, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")
    migrate(database_url, SCHEMA, tmp_path)
    edited.write_text("CREATE TABLE a (x int, y int);\n")
    write(tmp_path, "2026_01_02_1_create_b.sql", "CREATE TABLE b (x int);\n")

    with pytest.raises(MigrationError, match="2026_01_01_1_create_a.sql"):
        migrate(database_url, SCHEMA, tmp_path)

    assert applied(database_url) == ["2026_01_01_1_create_a.sql"]
    assert not table_exists(database_url, "things.b")


def test_missing_applied_file_is_refused(database_url: str, tmp_path: Path) -> None:
    gone = write(tmp_path, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")
    migrate(database_url, SCHEMA, tmp_path)
    gone.unlink()
    write(tmp_path, "2026_01_02_1_create_b.sql", "CREATE TABLE b (x int);\n")

    with pytest.raises(MigrationError, match="2026_01_01_1_create_a.sql.*missing"):
        migrate(database_url, SCHEMA, tmp_path)

    assert not table_exists(database_url, "things.b")


def test_failing_file_leaves_nothing_behind(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")
    broken = write(
        tmp_path,
        "2026_01_01_2_create_b.sql",
        "CREATE TABLE b (x int);\nINSERT INTO a VALUES (1);\nSELECT 1 / 0;\n",
    )
    write(tmp_path, "2026_01_01_3_create_c.sql", "CREATE TABLE c (x int);\n")

    with pytest.raises(MigrationError, match="2026_01_01_2_create_b.sql.*division by zero"):
        migrate(database_url, SCHEMA, tmp_path)

    # The file before it stays applied; the failing file left neither tables, rows nor a
    # schema_migrations row, and the runner stopped there.
    assert applied(database_url) == ["2026_01_01_1_create_a.sql"]
    assert not table_exists(database_url, "things.b")
    assert query(database_url, "SELECT count(*) FROM things.a") == [(0,)]
    assert not table_exists(database_url, "things.c")

    broken.write_text("CREATE TABLE b (x int);\n")
    assert migrate(database_url, SCHEMA, tmp_path) == [
        "2026_01_01_2_create_b.sql",
        "2026_01_01_3_create_c.sql",
    ]


def test_file_committing_by_itself_is_reported(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "2026_01_01_1_create_a.sql", "BEGIN;\nCREATE TABLE a (x int);\nCOMMIT;\n")

    with pytest.raises(MigrationError, match="2026_01_01_1_create_a.sql.*BEGIN/COMMIT"):
        migrate(database_url, SCHEMA, tmp_path)

    assert applied(database_url) == []


@pytest.mark.parametrize(
    "name",
    [
        "2026_1_1_1_short_date.sql",
        "2026_01_01_no_number.sql",
        "2026_01_01_1_upper_ext.SQL",
        "2026_01_01_1_Capitalised.sql",
        "2026_01_01_1_no description.sql",
        "2026_02_30_1_no_such_day.sql",
        "2026_01_01_1_backup.sql.bak",
        "notes.txt",
    ],
)
def test_badly_named_file_is_refused(database_url: str, tmp_path: Path, name: str) -> None:
    write(tmp_path, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")
    write(tmp_path, name, "CREATE TABLE b (x int);\n")

    with pytest.raises(MigrationError, match=name.replace(".", r"\.")):
        migrate(database_url, SCHEMA, tmp_path)

    assert query(database_url, "SELECT to_regnamespace('things')") == [(None,)]


def test_same_date_and_number_is_refused(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")
    write(tmp_path, "2026_01_01_01_create_b.sql", "CREATE TABLE b (x int);\n")

    with pytest.raises(MigrationError, match="same date and number"):
        migrate(database_url, SCHEMA, tmp_path)


def test_hidden_files_are_not_migrations(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, ".gitkeep", "")
    write(tmp_path, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")

    assert migrate(database_url, SCHEMA, tmp_path) == ["2026_01_01_1_create_a.sql"]


def test_missing_directory_is_refused(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="no such migrations directory"):
        migrate(database_url, SCHEMA, tmp_path / "nope")


def test_new_file_before_newest_applied_is_refused(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")
    write(tmp_path, "2026_01_03_1_create_c.sql", "CREATE TABLE c (x int);\n")
    migrate(database_url, SCHEMA, tmp_path)
    write(tmp_path, "2026_01_02_1_create_b.sql", "CREATE TABLE b (x int);\n")
    write(tmp_path, "2026_01_04_1_create_d.sql", "CREATE TABLE d (x int);\n")

    with pytest.raises(MigrationError, match="2026_01_02_1_create_b.sql"):
        migrate(database_url, SCHEMA, tmp_path)

    assert not table_exists(database_url, "things.b")
    assert not table_exists(database_url, "things.d")


def test_schemas_are_separate(database_url: str, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")
    write(second, "2026_01_01_1_create_a.sql", "CREATE TABLE a (y text);\n")

    assert migrate_all(database_url, [("first", first), ("second", second)]) == {
        "first": ["2026_01_01_1_create_a.sql"],
        "second": ["2026_01_01_1_create_a.sql"],
    }
    assert table_exists(database_url, "first.a")
    assert table_exists(database_url, "second.a")
    assert migrate_all(database_url, [("first", first), ("second", second)]) == {
        "first": [],
        "second": [],
    }


def test_migrate_all_checks_every_directory_first(database_url: str, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")
    write(second, "2026_1_1_1_create_b.sql", "CREATE TABLE b (x int);\n")

    with pytest.raises(MigrationError, match="2026_1_1_1_create_b.sql"):
        migrate_all(database_url, [("first", first), ("second", second)])

    assert query(database_url, "SELECT to_regnamespace('first')") == [(None,)]


def test_accepts_sqlalchemy_style_url(database_url: str, tmp_path: Path) -> None:
    from libs.urls import sqlalchemy_url

    write(tmp_path, "2026_01_01_1_create_a.sql", "CREATE TABLE a (x int);\n")

    assert migrate(sqlalchemy_url(database_url), SCHEMA, tmp_path) == ["2026_01_01_1_create_a.sql"]
