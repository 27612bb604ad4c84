"""The edit log's turn (editlog.py): replicas that edit at once are served first come, first served, and a
replica killed while waiting or while holding its turn does not stop the others for longer than its lease."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from service import editlog
from service.editlog import EditLog
from service.embedded_redis import EmbeddedRedis


@pytest.fixture()
def redis_url(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server.url
    server.stop()


def test_writers_take_turns_in_the_order_they_asked(redis_url):
    logs = [EditLog(redis_url, "fp") for _ in range(4)]
    order, holding = [], threading.Lock()

    def writer(i: int) -> None:
        with logs[i].turn(10) as got:
            assert got and holding.acquire(blocking=False), "two writers held the turn at once"
            order.append(i)
            time.sleep(0.1)
            holding.release()

    with logs[0].turn(10) as got:  # the first holds the turn while the others queue, 1 then 2 then 3
        assert got
        threads = []
        for i in (1, 2, 3):
            threads.append(threading.Thread(target=writer, args=(i,)))
            threads[-1].start()
            time.sleep(0.2)  # each has taken its ticket before the next starts
    for t in threads:
        t.join()
    assert order == [1, 2, 3]


def test_a_writer_killed_while_waiting_is_passed_over(redis_url):
    log = EditLog(redis_url, "fp")
    keys = [f"{log.turn_key}:{k}" for k in ("next", "serving", "since", "lease")]
    with log.turn(10):
        log.client.eval(editlog.TAKE_TICKET, 4, *keys)  # a writer that took a ticket, then died
    t0 = time.monotonic()
    with log.turn(10) as got:
        assert got
    assert editlog.TURN_GRACE_MS / 1000 <= time.monotonic() - t0 < editlog.TURN_GRACE_MS / 1000 + 2


def test_a_writer_killed_while_holding_its_turn_blocks_the_others_only_for_its_lease(redis_url, monkeypatch):
    monkeypatch.setattr(editlog, "TURN_LEASE_MS", 1_000)
    log = EditLog(redis_url, "fp")
    keys = [f"{log.turn_key}:{k}" for k in ("next", "serving", "since", "lease")]
    ticket = log.client.eval(editlog.TAKE_TICKET, 4, *keys)
    assert log.client.eval(editlog.POLL_TURN, 4, *keys, ticket, 1_000, editlog.TURN_GRACE_MS) == 1  # then killed
    t0 = time.monotonic()
    with log.turn(10) as got:
        assert got
    assert 1.0 <= time.monotonic() - t0 < 1.0 + editlog.TURN_GRACE_MS / 1000 + 2


def test_a_turn_that_does_not_come_in_time_lets_the_writer_go_ahead(redis_url):
    a, b = EditLog(redis_url, "fp"), EditLog(redis_url, "fp")
    with a.turn(10) as got_a:
        t0 = time.monotonic()
        with b.turn(0.3) as got_b:
            assert got_a and not got_b and time.monotonic() - t0 < 1.0
    with b.turn(0) as got:  # 0: no turns at all
        assert not got


def test_a_turn_whose_return_failed_is_returned_by_the_next_one(redis_url, monkeypatch):
    """Redis went away while a writer held its turn (killed and restarted from its append-only file): the return
    failed, and the lease would hold up every writer, this one included, for TURN_LEASE_MS. The writer's next
    turn returns it first and is served at once."""
    log = EditLog(redis_url, "fp")
    real = log.client.eval

    def eval_fails_on_return(script, *args):
        if script == editlog.END_TURN:
            raise redis.ConnectionError("Redis went away")
        return real(script, *args)

    monkeypatch.setattr(log.client, "eval", eval_fails_on_return)
    with log.turn(10) as got:
        assert got
    monkeypatch.setattr(log.client, "eval", real)
    t0 = time.monotonic()
    with log.turn(10) as got:
        assert got
    assert time.monotonic() - t0 < 1.0
