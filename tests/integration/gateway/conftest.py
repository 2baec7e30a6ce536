"""A real gateway process in front of a real grpc.aio test upstream process.

The upstream serves ``protos/gwtest/v1/library.proto`` compiled at test time; the gateway
is ``python -m gateway`` configured through FOLIO_* variables, as in production.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import google.api
import grpc
import grpc_tools
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

from libs.config import Settings
from libs.ids import new_id
from libs.secrets import SigningKey
from libs.tokens import sign_access_token
from tests.fixtures.processes import free_port

ROOT = Path(__file__).resolve().parents[3]
TEST_PROTOS = Path(__file__).resolve().parent / "protos"
LIBRARY_PROTO = TEST_PROTOS / "gwtest" / "v1" / "library.proto"


def compile_protos(source: Path, out: Path) -> Path:
    """Compile every proto under ``source`` into ``out`` with grpc_tools; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    includes = [
        source,
        ROOT / "protos",
        Path(grpc_tools.__file__).parent / "_proto",
        Path(google.api.__path__[0]).parent.parent,
    ]
    files = sorted(str(p.relative_to(source)) for p in source.rglob("*.proto"))
    args = ["protoc", *(f"-I{d}" for d in includes), f"--python_out={out}", *files]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {source}")
    return out


def _wait_serving(address: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"upstream at {address} did not become SERVING")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Upstream:
    """The test upstream process; restartable on the same port with other descriptors."""

    gen: Path
    port: int
    log: Path
    reflection: str = "both"
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, gen: Path | None = None) -> None:
        if gen is not None:
            self.gen = gen
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.gateway.upstream",
                    "--gen",
                    str(self.gen),
                    "--port",
                    str(self.port),
                    "--reflection",
                    self.reflection,
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_serving(self.address)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@dataclass
class Keys:
    """A signing key the gateway trusts, and a way to mint access tokens with it."""

    key: SigningKey
    settings: Settings = field(default_factory=Settings)

    def env(self) -> dict[str, str]:
        document = [
            {
                "kid": self.key.kid,
                "private_key_pem": self.key.private_key_pem,
                "created_at": self.key.created_at,
            }
        ]
        return {
            "FOLIO_JWT_SIGNING_KEYS": json.dumps(document),
            "FOLIO_JWT_ACTIVE_KID": self.key.kid,
            "FOLIO_INTERNAL_TOKEN_KEY": "gateway-tests-internal-key-0123456789abcdef",
        }

    def mint(self, user_id: str = "01HZZZZZZZZZZZZZZZZZZZZZZZ", *, ttl: int = 900) -> str:
        return sign_access_token(
            self.key,
            issuer=self.settings.token_issuer,
            audience=self.settings.token_audience,
            user_id=user_id,
            session_id=new_id(),
            ttl=ttl,
        )


def make_key(kid: str) -> SigningKey:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return SigningKey(kid=kid, private_key_pem=pem, created_at=int(time.time()))


@dataclass
class Gateway:
    """A gateway process (``python -m gateway``) and its base URL."""

    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("gateway did not start")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


def gateway_env(
    keys: Keys, upstreams: dict[str, str], data_dir: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLIO_")}
    env.update(keys.env())
    env.update(
        {
            "FOLIO_DATA_DIR": str(data_dir),
            "FOLIO_GATEWAY_UPSTREAMS": json.dumps(list(upstreams)),
            "FOLIO_GATEWAY_UPSTREAM_ADDRESSES": json.dumps(upstreams),
            "FOLIO_GATEWAY_MAX_BODY_BYTES": "65536",
            "FOLIO_GATEWAY_MAX_JSON_DEPTH": "16",
            "FOLIO_GATEWAY_MAX_DEADLINE_SECONDS": "30",
            "FOLIO_GATEWAY_REFLECTION_POLL_SECONDS": "0.5",
            "FOLIO_GATEWAY_SSE_HEARTBEAT_SECONDS": "0.25",
            "FOLIO_LOG_LEVEL": "INFO",
            **extra,
        }
    )
    return env


@pytest.fixture(scope="session")
def library_gen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test protos compiled into a temporary directory."""
    return compile_protos(TEST_PROTOS, tmp_path_factory.mktemp("gwtest-gen"))


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(make_key("gateway-test-key"))


@pytest.fixture(scope="session")
def library(library_gen: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The library upstream, serving reflection v1 and v1alpha."""
    upstream = Upstream(library_gen, free_port(), tmp_path_factory.mktemp("lib") / "up.log")
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def gateway(
    library: Upstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway whose only upstream is the library."""
    data_dir = tmp_path_factory.mktemp("gw")
    env = gateway_env(keys, {"library": library.address}, data_dir)
    env["FOLIO_GATEWAY_PORT"] = str(free_port())
    process = Gateway(int(env["FOLIO_GATEWAY_PORT"]), env, data_dir / "gateway.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def token(keys: Keys) -> str:
    return keys.mint()


@pytest.fixture
def copy_protos(tmp_path: Path) -> Path:
    """A private copy of the test protos, for tests that change them."""
    target = tmp_path / "protos"
    shutil.copytree(TEST_PROTOS, target)
    return target
