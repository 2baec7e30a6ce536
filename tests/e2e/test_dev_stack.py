"""``folio dev`` as a user runs it: start, mint a token, call with grpcurl, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.engines import claimed_redis_db, postgres_data_dir, replace_database
from tests.fixtures.processes import BIN, free_port, processes_with_env, wait_until

pytestmark = pytest.mark.e2e


@dataclass
class DevStack:
    process: subprocess.Popen[str]
    env: dict[str, str]
    user_address: str
    data_dir: Path

    def grpcurl(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        headers = ["-H", f"authorization: Bearer {token}"] if token else []
        return subprocess.run(
            [str(BIN / "grpcurl"), "-plaintext", *headers, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def mint(self, email: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "libs.cli", "token", "mint", "--email", email],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout.strip()


@pytest.fixture
def dev_stack(postgres_server_url: str, redis_url: str) -> Iterator[DevStack]:
    with postgres_data_dir() as data_dir, claimed_redis_db(redis_url) as own_redis_url:
        yield from _dev_stack(data_dir, postgres_server_url, own_redis_url)


def _dev_stack(data_dir: Path, postgres_server_url: str, redis_url: str) -> Iterator[DevStack]:
    ports = {
        f"FOLIO_{name.upper()}_PORT": str(free_port())
        for name in ("auth", "user", "document", "llm", "task", "gateway")
    }
    env = {**os.environ, **ports, "FOLIO_DATA_DIR": str(data_dir)}
    # With the machine's engines configured, use them; otherwise `folio dev` starts its own.
    if os.environ.get("FOLIO_TEST_DATABASE_URL"):
        import psycopg

        name = f"folio_dev_{os.getpid()}"
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        env["FOLIO_DATABASE_URL"] = replace_database(postgres_server_url, name)
        env["FOLIO_REDIS_URL"] = redis_url
    process = subprocess.Popen(
        [sys.executable, "-m", "libs.cli", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stack = DevStack(process, env, f"127.0.0.1:{ports['FOLIO_USER_PORT']}", data_dir)
    try:
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        for pid in processes_with_env("FOLIO_DATA_DIR", str(data_dir)):
            os.kill(pid, signal.SIGKILL)


def test_folio_dev_serves_the_user_service_and_stops_cleanly(dev_stack: DevStack) -> None:
    def listed() -> bool:
        return (
            "folio.user.v1.UserService" in dev_stack.grpcurl(dev_stack.user_address, "list").stdout
        )

    wait_until(listed, timeout=90, what="the user service to be listed by grpcurl")
    services = dev_stack.grpcurl(dev_stack.user_address, "list").stdout.split()
    assert {"folio.user.v1.UserService", "grpc.health.v1.Health"} <= set(services)
    assert any(s.startswith("grpc.reflection.") for s in services)

    token = dev_stack.mint("ada@example.com")
    me = dev_stack.grpcurl(
        "-d", "{}", dev_stack.user_address, "folio.user.v1.UserService/GetMe", token=token
    )
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["user"]["email"] == "ada@example.com"

    # A second `folio dev` in the same directory refuses at once and touches nothing.
    second = subprocess.run(
        [sys.executable, "-m", "libs.cli", "dev"],
        env=dev_stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert "already running" in second.stderr
    assert f"pid {dev_stack.process.pid}" in second.stderr
    again = dev_stack.grpcurl(
        "-d", "{}", dev_stack.user_address, "folio.user.v1.UserService/GetMe", token=token
    )
    assert again.returncode == 0, again.stderr

    anonymous = dev_stack.grpcurl(
        "-d", "{}", dev_stack.user_address, "folio.user.v1.UserService/GetMe"
    )
    assert anonymous.returncode != 0
    assert "Unauthenticated" in anonymous.stderr

    patched = dev_stack.grpcurl(
        "-d",
        '{"patch": {"theme": "dark", "lang": "fr"}}',
        dev_stack.user_address,
        "folio.user.v1.UserService/UpdateOptions",
        token=token,
    )
    assert patched.returncode == 0, patched.stderr
    assert json.loads(patched.stdout)["options"] == {"theme": "dark", "lang": "fr"}
    unset = dev_stack.grpcurl(
        "-d",
        '{"patch": {"theme": null}}',
        dev_stack.user_address,
        "folio.user.v1.UserService/UpdateOptions",
        token=token,
    )
    assert json.loads(unset.stdout)["options"] == {"lang": "fr"}

    # Ctrl-C: everything stops, nothing is left behind.
    dev_stack.process.send_signal(signal.SIGINT)
    output, _ = dev_stack.process.communicate(timeout=60)
    assert dev_stack.process.returncode == 0, output
    assert "stopped" in output
    # A healthy stack, idle or answering these calls, logs no error.
    errors = [line for line in output.splitlines() if '"level": "ERROR"' in line]
    assert errors == [], errors[:3]
    assert processes_with_env("FOLIO_DATA_DIR", str(dev_stack.data_dir)) == []
