"""The ``folio`` command as an operator runs it."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.processes import free_port
from tests.fixtures.services import RunningService


def folio(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libs.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_applies_once(database_url: str, tmp_path: Path) -> None:
    first = folio("migrate", FOLIO_DATABASE_URL=database_url, FOLIO_DATA_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "users: applied 1 migration(s)" in first.stdout
    again = folio("migrate", FOLIO_DATABASE_URL=database_url, FOLIO_DATA_DIR=str(tmp_path))
    assert "users: applied 0 migration(s)" in again.stdout


def test_token_mint_creates_the_user_once_and_is_refused_in_production(
    database_url: str, tmp_path: Path
) -> None:
    env = {"FOLIO_DATABASE_URL": database_url, "FOLIO_DATA_DIR": str(tmp_path)}
    assert folio("migrate", **env).returncode == 0
    tokens = [folio("token", "mint", "--email", "ops@example.com", **env) for _ in range(2)]
    assert all(t.returncode == 0 for t in tokens), tokens[0].stderr
    assert all(t.stdout.count(".") == 2 for t in tokens)

    import psycopg

    with psycopg.connect(database_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM users.users WHERE email = 'ops@example.com'"
        ).fetchone()
    assert count == (1,)

    refused = folio("token", "mint", "--email", "ops@example.com", FOLIO_ENV="production", **env)
    assert refused.returncode == 2
    assert "development only" in refused.stderr

    # Keys from the environment (or a secrets store) are never minted with, even in dev.
    import json

    generated = json.loads((tmp_path / "secrets.json").read_text())
    real_keys = {
        "FOLIO_JWT_SIGNING_KEYS": json.dumps(generated["jwt_signing_keys"]),
        "FOLIO_JWT_ACTIVE_KID": generated["jwt_active_kid"],
        "FOLIO_INTERNAL_TOKEN_KEY": generated["internal_token_key"],
    }
    with_real_keys = folio("token", "mint", "--email", "ops@example.com", **env, **real_keys)
    assert with_real_keys.returncode == 2, with_real_keys.stdout
    assert "development only" in with_real_keys.stderr


@pytest.mark.parametrize("args", [["serve", "nosuch"], ["token"]])
def test_bad_usage_is_reported(args: list[str]) -> None:
    result = folio(*args)
    assert result.returncode == 2
    assert "usage: folio" in result.stderr


async def test_container_health_check(user_service: RunningService) -> None:
    async def check(*args: str) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "libs.healthcheck", *args
        )
        return await process.wait()

    assert await check(user_service.address) == 0
    assert await check(user_service.address, "folio.user.v1.UserService") == 0
    assert await check(user_service.address, "folio.nope.v1.NopeService") == 1
    assert await check(f"127.0.0.1:{free_port()}") == 1
