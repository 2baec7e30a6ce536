"""The SQL migration runner: each service's ``migrations/*.sql`` applied once, in order."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from libs.urls import libpq_url

logger = logging.getLogger(__name__)

FILENAME_PATTERN = re.compile(
    r"(?P<year>\d{4})_(?P<month>\d{2})_(?P<day>\d{2})_(?P<n>\d+)_[a-z0-9]+(?:_[a-z0-9]+)*\.sql"
)
_SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class MigrationError(Exception):
    """The migrations cannot be applied as they are; nothing further was applied."""


@dataclass(frozen=True)
class Migration:
    """One migration file, read and checksummed."""

    filename: str
    key: tuple[datetime.date, int]
    sql: bytes

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql).hexdigest()


def sort_key(filename: str) -> tuple[datetime.date, int]:
    """The (date, N) a migration file name sorts by; MigrationError if it is malformed."""
    match = FILENAME_PATTERN.fullmatch(filename)
    if match is None:
        raise MigrationError(
            f"{filename}: migration files must be named YYYY_MM_DD_N_description.sql "
            "(description in lower-case snake_case)"
        )
    try:
        date = datetime.date(int(match["year"]), int(match["month"]), int(match["day"]))
    except ValueError as exc:
        raise MigrationError(f"{filename}: {exc}") from None
    return date, int(match["n"])


def load_migrations(directory: Path) -> list[Migration]:
    """Every migration in ``directory``, in the order they apply."""
    if not directory.is_dir():
        raise MigrationError(f"{directory}: no such migrations directory")
    migrations = []
    for path in directory.iterdir():
        # Dotfiles (.gitkeep, editor swap files) and bytecode caches are not migrations;
        # anything else that is misnamed would silently never run, so it is an error.
        if path.name.startswith(".") or path.name == "__pycache__":
            continue
        key = sort_key(path.name)
        if not path.is_file():
            raise MigrationError(f"{path}: a migration must be a file")
        migrations.append(Migration(path.name, key, path.read_bytes()))
    migrations.sort(key=lambda m: m.key)
    for previous, current in zip(migrations, migrations[1:], strict=False):
        if previous.key == current.key:
            raise MigrationError(
                f"{previous.filename} and {current.filename} have the same date and number"
            )
    return migrations


def _lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory lock key for ``schema``'s migrations."""
    digest = hashlib.sha256(f"folio.migrations:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _table(schema: str) -> sql.Composed:
    return sql.SQL("{}.schema_migrations").format(sql.Identifier(schema))


def _applied(conn: psycopg.Connection[TupleRow], schema: str) -> dict[str, str] | None:
    """Applied file name -> checksum, or None when the schema has no migrations table."""
    row = conn.execute(
        "SELECT to_regclass(%s)", (f"{sql.Identifier(schema).as_string(conn)}.schema_migrations",)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    rows = conn.execute(sql.SQL("SELECT filename, checksum FROM {}").format(_table(schema)))
    return dict(rows.fetchall())


def _pending(schema: str, migrations: list[Migration], applied: dict[str, str]) -> list[Migration]:
    """The migrations still to apply, after checking the applied history is intact."""
    on_disk = {m.filename: m for m in migrations}
    for filename, checksum in sorted(applied.items()):
        migration = on_disk.get(filename)
        if migration is None:
            raise MigrationError(f"{schema}: applied migration {filename} is missing")
        if migration.checksum != checksum:
            raise MigrationError(
                f"{schema}: applied migration {filename} was edited (checksum mismatch); "
                "add a new migration instead"
            )
    pending = [m for m in migrations if m.filename not in applied]
    if pending and applied:
        newest = max(applied, key=sort_key)
        early = [m.filename for m in pending if m.key < sort_key(newest)]
        if early:
            raise MigrationError(
                f"{schema}: {', '.join(early)} sorts before the already applied {newest}; "
                "rename it to come after"
            )
    return pending


def _apply(conn: psycopg.Connection[TupleRow], schema: str, migration: Migration) -> None:
    """Run one file and record it, in a single transaction."""
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)),
            )
            # No parameters: psycopg sends the file with the simple query protocol, which
            # allows several statements in one go.
            conn.execute(migration.sql)
            if conn.info.transaction_status != TransactionStatus.INTRANS:
                raise MigrationError(
                    f"{schema}: {migration.filename} ended the runner's transaction, so "
                    "what it committed is applied but not recorded; remove its "
                    "BEGIN/COMMIT and restore the database"
                )
            conn.execute(
                sql.SQL("INSERT INTO {} (filename, checksum) VALUES (%s, %s)").format(
                    _table(schema)
                ),
                (migration.filename, migration.checksum),
            )
    except psycopg.Error as exc:
        raise MigrationError(f"{schema}: {migration.filename} failed: {exc}") from exc
    logger.info(
        "applied migration %s to schema %s",
        migration.filename,
        schema,
        extra={"schema": schema, "migration": migration.filename},
    )


def _migrate(database_url: str, schema: str, migrations: list[Migration]) -> list[str]:
    url = libpq_url(database_url)
    with psycopg.connect(url, autocommit=True) as conn:
        # Fast path without the lock: a started service usually has nothing to apply.
        applied = _applied(conn, schema)
        if applied is not None and not _pending(schema, migrations, applied):
            return []

        with psycopg.connect(url, autocommit=True) as lock_conn:
            lock_conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key(schema),))
            try:
                # Creating the schema under the lock too: concurrent CREATE ... IF NOT
                # EXISTS can still fail with a unique violation.
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} ("
                        " filename text PRIMARY KEY,"
                        " checksum text NOT NULL,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(_table(schema))
                )
                # Another runner may have applied some while we waited for the lock.
                pending = _pending(schema, migrations, _applied(conn, schema) or {})
                for migration in pending:
                    _apply(conn, schema, migration)
            finally:
                # If the session broke, closing it released the lock anyway; don't let that
                # hide the error that brought us here.
                with contextlib.suppress(psycopg.Error):
                    lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(schema),))
    return [m.filename for m in pending]


def _check_schema(schema: str) -> None:
    if not _SCHEMA_PATTERN.fullmatch(schema):
        raise MigrationError(f"{schema!r} is not a valid schema name")


def migrate(database_url: str, schema: str, directory: Path) -> list[str]:
    """Apply the new migrations in ``directory`` to ``schema``; return the files applied."""
    _check_schema(schema)
    return _migrate(database_url, schema, load_migrations(directory))


def migrate_all(database_url: str, targets: Sequence[tuple[str, Path]]) -> dict[str, list[str]]:
    """Migrate several schemas, checking every directory's file names before touching any."""
    loaded: dict[str, list[Migration]] = {}
    for schema, directory in targets:
        _check_schema(schema)
        if schema in loaded:
            raise MigrationError(f"schema {schema} is listed twice")
        loaded[schema] = load_migrations(directory)
    return {
        schema: _migrate(database_url, schema, migrations) for schema, migrations in loaded.items()
    }
