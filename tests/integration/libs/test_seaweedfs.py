"""The embedded S3 server: start, stop, restart, isolation, and recovery from a killed run."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import httpx
import psutil
import pytest
from botocore.config import Config

from libs.seaweedfs import EmbeddedS3, start_seaweedfs
from tests.fixtures.processes import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ROOT = Path(__file__).resolve().parents[3]
# weed mini starts in about a second and stops in about one; generous for a loaded machine.
START_WITHIN_SECONDS = 20.0


@pytest.fixture
def s3_in() -> Iterator[Callable[..., EmbeddedS3]]:
    """start_seaweedfs, with every server it started stopped after the test."""
    started: list[EmbeddedS3] = []

    def start(data_dir: Path, **kwargs: int) -> EmbeddedS3:
        started.append(start_seaweedfs(data_dir, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def client_for(server: EmbeddedS3) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=server.url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    return False


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


def test_start_serves_s3_and_stop_ends_it(tmp_path: Path, s3_in) -> None:
    started = time.monotonic()
    server = s3_in(tmp_path)
    assert time.monotonic() - started < START_WITHIN_SECONDS

    assert server.url == f"http://127.0.0.1:{server.port}"
    client = client_for(server)
    client.create_bucket(Bucket="first")
    client.put_object(Bucket="first", Key="k", Body=b"value")
    assert client.get_object(Bucket="first", Key="k")["Body"].read() == b"value"

    server.stop()
    server.stop()  # idempotent

    assert wait_until(lambda: process_gone(server.pid), 10)
    assert refuses_connections(server.url)


def test_listens_on_loopback_only(tmp_path: Path, s3_in) -> None:
    server = s3_in(tmp_path)
    expected = set(server.ports.values())

    # The admin server and its worker come up just after S3 answers.
    assert wait_until(lambda: expected <= {port for _, port in listening_addresses(server.pid)}, 20)

    addresses = listening_addresses(server.pid)
    assert len(expected) == 10  # master, volume, filer, S3 and admin, each with gRPC
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}
    assert {8333, 8888, 9333}.isdisjoint(port for _, port in addresses)


def test_anonymous_requests_are_refused(tmp_path: Path, s3_in) -> None:
    server = s3_in(tmp_path)
    client_for(server).create_bucket(Bucket="private")
    client_for(server).put_object(Bucket="private", Key="secret", Body=b"private object body")

    listing = httpx.get(f"{server.url}/private")
    reading = httpx.get(f"{server.url}/private/secret")
    writing = httpx.put(f"{server.url}/private/planted", content=b"x")
    creating = httpx.put(f"{server.url}/anonymous-bucket")

    for response in (listing, reading, writing, creating):
        assert response.status_code == HTTPStatus.FORBIDDEN
    assert b"private object body" not in reading.content
    keys = [o["Key"] for o in client_for(server).list_objects_v2(Bucket="private")["Contents"]]
    assert keys == ["secret"]
    assert "anonymous-bucket" not in {
        b["Name"] for b in client_for(server).list_buckets()["Buckets"]
    }


def test_wrong_secret_is_refused(tmp_path: Path, s3_in) -> None:
    server = s3_in(tmp_path)
    client = boto3.client(
        "s3",
        endpoint_url=server.url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key="not-the-secret",
        region_name=server.region,
        config=Config(retries={"total_max_attempts": 1}),
    )

    with pytest.raises(client.exceptions.ClientError) as raised:
        client.list_buckets()

    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == HTTPStatus.FORBIDDEN


def test_restart_keeps_data_credentials_and_url(tmp_path: Path, s3_in) -> None:
    server = s3_in(tmp_path)
    client_for(server).create_bucket(Bucket="kept")
    client_for(server).put_object(Bucket="kept", Key="k", Body=b"still here")
    server.stop()

    again = s3_in(tmp_path)

    assert (again.access_key, again.secret_key) == (server.access_key, server.secret_key)
    assert again.url == server.url
    assert again.pid != server.pid
    body = client_for(again).get_object(Bucket="kept", Key="k")["Body"].read()
    assert body == b"still here"
    credentials = [p for p in tmp_path.iterdir() if p.name.endswith(".json") and "ident" in p.name]
    assert credentials
    for path in credentials:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert server.secret_key in path.read_text()


def test_second_start_reuses_the_running_server(tmp_path: Path, s3_in) -> None:
    first = s3_in(tmp_path)

    second = s3_in(tmp_path)

    assert second.pid == first.pid
    assert second.url == first.url


def test_two_instances_do_not_collide(tmp_path: Path, s3_in) -> None:
    port = free_port()
    one = s3_in(tmp_path / "one", port=port)
    two = s3_in(tmp_path / "two")

    assert one.url == f"http://127.0.0.1:{port}"
    assert listening_addresses(one.pid).isdisjoint(listening_addresses(two.pid))
    client_for(one).create_bucket(Bucket="only-in-one")
    assert [b["Name"] for b in client_for(one).list_buckets()["Buckets"]] == ["only-in-one"]
    assert client_for(two).list_buckets()["Buckets"] == []
    assert one.access_key != two.access_key


def test_start_after_a_killed_server(tmp_path: Path, s3_in) -> None:
    server = s3_in(tmp_path)
    client_for(server).create_bucket(Bucket="kept")
    client_for(server).put_object(Bucket="kept", Key="k", Body=b"written before the kill")
    os.kill(server.pid, signal.SIGKILL)
    assert wait_until(lambda: process_gone(server.pid), 10)

    again = s3_in(tmp_path)

    assert again.pid != server.pid
    body = client_for(again).get_object(Bucket="kept", Key="k")["Body"].read()
    assert body == b"written before the kill"


def start_in_a_killed_supervisor(data_dir: Path) -> int:
    """Start a server from a process that is then SIGKILLed; the orphaned weed's pid."""
    script = (
        "import sys; from pathlib import Path; from libs.seaweedfs import start_seaweedfs; "
        "print(start_seaweedfs(Path(sys.argv[1])).pid, flush=True); sys.stdin.read()"
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert supervisor.stdout is not None
        orphan_pid = int(supervisor.stdout.readline())
    finally:
        supervisor.kill()
        supervisor.wait()
    assert not process_gone(orphan_pid)
    return orphan_pid


def test_server_left_by_a_killed_supervisor_is_reused_then_stopped(tmp_path: Path, s3_in) -> None:
    # A `folio dev` killed with SIGKILL cannot stop its server, which keeps running.
    orphan_pid = start_in_a_killed_supervisor(tmp_path)

    server = s3_in(tmp_path)

    assert server.pid == orphan_pid
    client_for(server).create_bucket(Bucket="works")
    server.stop()
    assert wait_until(lambda: process_gone(orphan_pid), 10)
    assert refuses_connections(server.url)


def test_server_left_by_a_killed_supervisor_is_replaced_when_unfit(tmp_path: Path, s3_in) -> None:
    orphan_pid = start_in_a_killed_supervisor(tmp_path)
    port = free_port()

    # The leftover serves another port than the one asked for now.
    server = s3_in(tmp_path, port=port)

    assert server.pid != orphan_pid
    assert server.url == f"http://127.0.0.1:{port}"
    assert process_gone(orphan_pid)
    client_for(server).create_bucket(Bucket="works")
