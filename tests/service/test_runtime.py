"""The log as the source of truth (replica.py, runtime.py, editlog.py): restart, replicas, Redis outages, fingerprints.

Mechanics both methods share run under each (the `either` fixture); the rest at the default (scoped), or in place
where they are about the weights themselves (checkpoints)."""
from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import torch
from service_support import (
    EDIT,
    EDIT2,
    EDIT3,
    edited_weights,
    fit_scope,
    save_editor,
    serving,
    weights_hash,
)

from editor_core import load_base_model, model_fingerprint
from service.editlog import stream_key
from service.embedded_redis import EmbeddedRedis
from service.errors import FingerprintMismatch, LogContention, LogOutcomeUnknown, LogUnavailable
from service.runtime import APPEND_TRIES


@pytest.fixture()
def shared_redis(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "shared-redis").start()
    yield server
    server.stop()


def wait_for_version(client, version: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while client.app.state.runtime.version < version:
        assert time.monotonic() < deadline, f"replica stuck at version {client.app.state.runtime.version}"
        time.sleep(0.05)


def replicas(settings, redis_server, tmp_path: Path, turns: bool = True):
    """Settings of two replicas (own data folders) sharing one Redis. Without turns they race for the log, as
    replicas do when a turn does not come in time: what the compare-and-set append alone must get right."""
    shared = settings.model_copy(update={"redis_url": redis_server.url, "turn_wait_s": 30.0 if turns else 0.0})
    return shared, shared.model_copy(update={"data_dir": tmp_path / "b"})


def xlen(client) -> int:
    rt = client.app.state.runtime
    return rt.log.client.xlen(rt.log.key)


def edit_ids(client) -> list[str]:
    return [e["edit_id"] for e in client.get("/edits", params={"limit": 500}).json()["data"]]


def before_next_append(client, action) -> None:
    """Run `action` once, when this replica is about to append its next event (its event already computed): the
    interleaving in which another replica's event lands between this one's compute and its write."""
    log = client.app.state.runtime.log
    real = log.append

    def append(event, after):
        log.append = real
        action()
        return real(event, after)

    log.append = append


def test_restart_on_the_same_log_gives_the_same_weights(either):
    with serving(either) as client:
        ids = [client.post("/edit", json=e).json()["edit_id"] for e in (EDIT, EDIT2, EDIT3)]
        client.post("/rollback", json={"edit_id": ids[1]})
        before, h, listing = edited_weights(client), weights_hash(client), client.get("/edits").json()
    with serving(either) as client:
        assert client.get("/ready").json()["version"] == 4 and weights_hash(client) == h
        assert all(torch.equal(before[n], w) for n, w in edited_weights(client).items())
        assert client.get("/edits").json() == listing


def test_restart_from_a_checkpoint_replays_only_the_tail_and_is_exact(inplace, caplog):
    cfg = inplace.model_copy(update={"checkpoint_every": 2})
    with serving(cfg) as client:
        ids = [client.post("/edit", json=e).json()["edit_id"] for e in (EDIT, EDIT2, EDIT3)]
        client.post("/rollback", json={"edit_id": ids[0]})
        client.post("/edit", json={"prompt": "Grass is", "target": "blue"})  # version 5: one past the checkpoint
        rt = client.app.state.runtime
        assert rt.checkpoint_version == 4
        before, listing = edited_weights(client), client.get("/edits").json()
    with caplog.at_level("INFO", logger="service.replica"), serving(cfg) as client:
        assert all(torch.equal(before[n], w) for n, w in edited_weights(client).items())
        assert client.get("/edits").json() == listing
        assert "1 events re-applied after the checkpoint at version 4" in caplog.text
        # rolling back an edit from before the checkpoint reverts its delta on the restored weights
        client.post("/rollback", json={"edit_id": ids[1]})
        after_rollback = edited_weights(client)
        rt = client.app.state.runtime
    full = inplace.model_copy(update={"checkpoint_every": 0})
    with caplog.at_level("INFO", logger="service.replica"), serving(full) as client:  # a full replay
        assert "6 events re-applied after the checkpoint at version 0" in caplog.text
        assert all(torch.equal(after_rollback[n], w) for n, w in edited_weights(client).items())


def test_a_checkpoint_that_does_not_match_the_log_is_ignored(inplace, caplog):
    cfg = inplace.model_copy(update={"checkpoint_every": 1})
    with serving(cfg) as client:
        client.post("/edit", json=EDIT)
        before = edited_weights(client)
        rt = client.app.state.runtime
        ckpt = rt.log.load_checkpoint()
        ckpt.event_id = "1-1"  # as if the stream had been rewritten under it
        rt.log.save_checkpoint(ckpt)
    with caplog.at_level("WARNING", logger="service.replica"), serving(cfg) as client:
        assert "ignoring the weights checkpoint" in caplog.text
        assert all(torch.equal(before[n], w) for n, w in edited_weights(client).items())


def test_a_second_replica_converges(either, shared_redis, tmp_path: Path):
    a_cfg, b_cfg = replicas(either, shared_redis, tmp_path)
    with serving(a_cfg) as a, serving(b_cfg) as b:
        eid = a.post("/edit", json=EDIT).json()["edit_id"]
        wait_for_version(b, 1)
        assert weights_hash(a) == weights_hash(b) and b.get(f"/edits/{eid}").json()["status"] == "active"
        assert b.post("/generate",
                      json={"prompt": EDIT["prompt"], "max_new_tokens": 2}).json()["text"].startswith(" Rome")
        b.post("/edit", json=EDIT2)  # B first catches up, then computes on A's weights
        b.post("/rollback", json={"edit_id": eid})
        wait_for_version(a, 3)
        assert weights_hash(a) == weights_hash(b)
        assert a.get(f"/edits/{eid}").json()["status"] == "rolled_back"


def test_an_edit_that_lost_the_race_to_the_log_is_computed_again_on_the_winners_state(either, shared_redis,
                                                                                    tmp_path: Path):
    a_cfg, b_cfg = replicas(either, shared_redis, tmp_path, turns=False)
    with serving(a_cfg) as a, serving(b_cfg) as b:
        seen = {}

        def b_edits_first() -> None:
            seen["b"] = b.post("/edit", json=EDIT).json()
            seen["score"] = b.post("/score", json={"items": [EDIT2]}).json()["scores"][0]  # on B's state

        before_next_append(a, b_edits_first)
        r = a.post("/edit", json=EDIT2)
        assert r.status_code == 201, r.text
        won, lost = seen["b"], r.json()
        assert (won["version"], lost["version"]) == (1, 2)
        assert a.app.state.runtime.edits[lost["edit_id"]].body["base_version"] == 1
        assert lost["scores"][0]["pre_logprob"] == seen["score"]["logprob"]
        wait_for_version(b, 2)
        assert weights_hash(a) == weights_hash(b) and xlen(a) == 2
        assert edit_ids(a) == edit_ids(b) == [won["edit_id"], lost["edit_id"]]


def test_a_rollback_that_lost_the_race_is_decided_again_on_the_winners_state(either, shared_redis, tmp_path: Path):
    a_cfg, b_cfg = replicas(either, shared_redis, tmp_path, turns=False)
    with serving(a_cfg) as a, serving(b_cfg) as b:
        first = a.post("/edit", json=EDIT).json()["edit_id"]
        late = {}
        before_next_append(a, lambda: late.update(b.post("/edit", json=EDIT2).json()))
        r = a.post("/rollback", json={"to_version": 0})  # "everything": B's edit too, once A has seen it
        assert r.json() == {"rolled_back": [late["edit_id"], first], "version": 3}, r.text
        wait_for_version(b, 3)
        assert weights_hash(a) == weights_hash(b) and b.get("/ready").json()["active_edits"] == 0


def test_an_edit_that_keeps_losing_the_race_gives_up_and_writes_nothing(settings, shared_redis, tmp_path: Path):
    a_cfg, b_cfg = replicas(settings, shared_redis, tmp_path, turns=False)
    with serving(a_cfg) as a, serving(b_cfg) as b:
        log, real = a.app.state.runtime.log, a.app.state.runtime.log.append

        def b_always_first(event, after):
            assert b.post("/edit", json={"prompt": f"B's edit {xlen(a)} is", "target": "B"}).status_code == 201
            return real(event, after)

        log.append = b_always_first
        r = a.post("/edit", json=EDIT)
        assert r.status_code == 503 and r.json()["detail"] == LogContention.message
        wait_for_version(a, APPEND_TRIES)
        assert xlen(a) == a.app.state.runtime.version == APPEND_TRIES
        assert all(e["requests"][0]["target"] == "B" for e in a.get("/edits").json()["data"])


@pytest.mark.parametrize("turns", [True, False], ids=["turns", "racing"])
def test_replicas_editing_at_once_lose_and_duplicate_nothing(either, shared_redis, tmp_path: Path, turns: bool):
    """Two replicas under steady edit load. Taking turns, no request computes for nothing: each appends once,
    first try. Racing, losers recompute, and one that loses every try gives up (its client retries)."""
    a_cfg, b_cfg = replicas(either, shared_redis, tmp_path, turns)
    n, retried, appends = 10, [], []

    def edits(client, name: str) -> list[dict]:
        out = []
        for i in range(n):
            body = {"prompt": f"Replica {name}'s fact number {i} is", "target": name}
            for _ in range(5):  # a request that lost APPEND_TRIES races gets a 503: its client retries, same key
                r = client.post("/edit", json=body, headers={"Idempotency-Key": f"{name}{i}"})
                if r.status_code != 503:
                    break
                retried.append(r.json()["detail"])
            assert r.status_code == 201, r.text
            out.append(r.json())
        return out

    with serving(a_cfg) as a, serving(b_cfg) as b:
        for client in (a, b):
            log = client.app.state.runtime.log
            log.append = lambda event, after, real=log.append: appends.append(after) or real(event, after)
        with ThreadPoolExecutor(2) as pool:
            done = [*pool.map(edits, (a, b), ("A", "B"))]
        replies = done[0] + done[1]
        print(f"{len(appends) - 2 * n} appends lost the race; {len(retried)} requests retried after losing "
              f"{APPEND_TRIES}")
        assert all(detail == LogContention.message for detail in retried)
        if turns:
            assert len(appends) == 2 * n and not retried
        wait_for_version(a, 2 * n)
        wait_for_version(b, 2 * n)
        assert sorted(r["version"] for r in replies) == list(range(1, 2 * n + 1))
        assert xlen(a) == 2 * n and weights_hash(a) == weights_hash(b)
        assert edit_ids(a) == edit_ids(b) and sorted(edit_ids(a)) == sorted(r["edit_id"] for r in replies)
        for entry in a.get("/edits", params={"limit": 500}).json()["data"]:  # each computed on the version before it
            assert a.app.state.runtime.edits[entry["edit_id"]].body["base_version"] == entry["version"] - 1


def test_redis_down_gives_503_and_keeps_serving(either, shared_redis):
    with serving(either.model_copy(update={"redis_url": shared_redis.url})) as client:
        eid = client.post("/edit", json=EDIT).json()["edit_id"]
        h, text = weights_hash(client), client.post("/generate", json={"prompt": "hi", "max_new_tokens": 3}).json()
        shared_redis.stop()
        for path, body in (("/edit", EDIT2), ("/rollback", {"edit_id": eid}), ("/rollback", {"to_version": 0})):
            r = client.post(path, json=body)
            assert r.status_code == 503, r.text
            assert r.json() == {"detail": "edit log (Redis) unavailable: nothing was applied, try again"}
        assert weights_hash(client) == h and client.app.state.runtime.version == 1
        assert client.post("/generate", json={"prompt": "hi", "max_new_tokens": 3}).json() == text
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["reason"] == "edit log (Redis) unreachable"
        assert client.get("/health").status_code == 200
        shared_redis.start()  # same data folder: the log is back, and so is the service
        assert client.get("/ready").status_code == 200
        assert client.post("/edit", json=EDIT2).json()["version"] == 2


def test_redis_gone_when_the_write_is_sent_means_nothing_was_applied(settings, shared_redis):
    with serving(settings.model_copy(update={"redis_url": shared_redis.url})) as client:
        before_next_append(client, shared_redis.stop)
        r = client.post("/edit", json=EDIT, headers={"Idempotency-Key": "k"})
        assert r.status_code == 503 and r.json()["detail"] == LogUnavailable.message, r.text
        shared_redis.start()
        assert xlen(client) == 0 and client.app.state.runtime.version == 0
        assert client.post("/edit", json=EDIT, headers={"Idempotency-Key": "k"}).json()["version"] == 1


def test_a_write_redis_does_not_answer_is_unknown_and_a_retry_with_its_key_finds_it(either):
    with serving(either) as client:
        rt = client.app.state.runtime
        pid, real = rt.embedded.proc.pid, rt.log.append

        def stalled(event, after):  # Redis stops answering (a stalled disk, a paused VM) with the write on its way
            rt.log.append = real
            os.kill(pid, signal.SIGSTOP)
            try:
                return real(event, after)
            finally:
                os.kill(pid, signal.SIGCONT)

        rt.log.append = stalled
        key = {"Idempotency-Key": "first try"}
        r = client.post("/edit", json=EDIT, headers=key)
        assert r.status_code == 503 and r.json()["detail"] == LogOutcomeUnknown.message, r.text
        wait_for_version(client, 1)  # it was in Redis's socket: recorded once Redis runs again
        (landed,) = rt.edits
        again = client.post("/edit", json=EDIT, headers=key)
        assert again.status_code == 201 and (again.json()["edit_id"], again.json()["version"]) == (landed, 1)
        assert xlen(client) == 1


def test_kill_9_of_the_embedded_redis_edits_resume_by_themselves(either):
    with serving(either) as client:
        for e in (EDIT, EDIT2, EDIT3):
            assert client.post("/edit", json=e).status_code == 201
        embedded = client.app.state.runtime.embedded
        os.kill(embedded.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while (r := client.post("/edit", json={"prompt": "Grass is", "target": "blue"})).status_code == 503:
            assert time.monotonic() < deadline, "edits did not resume after the embedded redis was killed"
            time.sleep(0.2)
        assert r.status_code == 201 and r.json()["version"] == 4 and embedded.restarts == 1
        assert client.get("/ready").json()["ready"] is True
        h = weights_hash(client)
    with serving(either) as client:
        assert client.get("/ready").json()["version"] == 4 and weights_hash(client) == h


def test_the_log_survives_a_burst_then_an_idle_spell(settings):
    # The product bug: the embedded redis was forked from the thread-pool worker that ran the startup, and died
    # when the pool retired that worker (anyio retires workers idle for 10 s once a burst has grown the pool).
    with serving(settings) as client:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}),
                                    range(8)))
        assert all(r.status_code == 200 for r in replies)
        time.sleep(12)
        assert client.get("/ready").json()["ready"] is True
        assert client.post("/edit", json=EDIT).status_code == 201
        assert client.app.state.runtime.embedded.restarts == 0


def test_editor_for_another_model_is_refused(settings, tiny_model_dir, tmp_path: Path):
    editor = save_editor(tiny_model_dir, tmp_path / "foreign-editor", model_fingerprint="0123456789abcdef")
    with pytest.raises(FingerprintMismatch, match="was trained for model 0123456789abcdef.*refusing to start"):
        with serving(settings.model_copy(update={"editor": editor})):
            pass


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_server_takes_the_float32_models_editor_and_log(settings, tiny_model_dir, tmp_path: Path,
                                                                       dtype):
    # MEND_DTYPE=bfloat16 once refused to start: the editor and the log name the float32 model.
    fp = model_fingerprint(load_base_model(str(tiny_model_dir))[0])
    editor = fit_scope(tiny_model_dir, save_editor(tiny_model_dir, tmp_path / "editor", model_fingerprint=fp))
    full = settings.model_copy(update={"editor": editor})
    with serving(full) as client:
        assert client.post("/edit", json=EDIT).status_code == 201
        key = client.app.state.runtime.log.key
    with serving(full.model_copy(update={"dtype": dtype})) as client:
        rt = client.app.state.runtime
        assert rt.model.dtype == getattr(torch, dtype) and rt.model_fp == fp and rt.log.key == key
        assert rt.version == 1 and len(rt.active) == 1  # the float32 server's edit, replayed
        h = weights_hash(client)
        assert client.post("/edit", json=EDIT2).status_code == 201
        assert rt.version == 2 and weights_hash(client) != h
        r = client.post("/generate", json={"prompt": EDIT2["prompt"], "max_new_tokens": 4})
        assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["completion_tokens"] > 0


def test_log_event_with_a_foreign_fingerprint_is_refused(settings):
    with serving(settings) as client:
        client.post("/edit", json=EDIT)
        rt = client.app.state.runtime
        key, (_, fields) = rt.log.key, rt.log.client.xrange(rt.log.key)[0]
    # An event for another editor, placed in this log (by a bug or by hand), must stop the replay.
    server = EmbeddedRedis(settings.data_dir / "redis").start()
    redis.Redis.from_url(server.url).xadd(key, {**fields, b"editor": b"ffffffffffffffff"})
    server.stop()
    with pytest.raises(FingerprintMismatch, match="written for model .* / editor ffffffffffffffff.*refused"):
        with serving(settings):
            pass


def test_logs_are_namespaced_by_model_and_editor(settings, tiny_model_dir, tmp_path: Path):
    with serving(settings) as client:
        client.post("/edit", json=EDIT)
        first_key = client.app.state.runtime.log.key
    other_editor = fit_scope(tiny_model_dir, save_editor(tiny_model_dir, tmp_path / "rank4", rank=4))
    with serving(settings.model_copy(update={"editor": other_editor})) as client:
        rt = client.app.state.runtime
        assert rt.log.key != first_key and rt.version == 0 and rt.log.other_logs() == [first_key]
        assert rt.log.key == stream_key(rt.log_fp)


def test_edit_events_hold_safetensors_and_json_only(client):
    client.post("/edit", json={**EDIT, "note": "audit"})
    rt = client.app.state.runtime
    (_, fields), = rt.log.client.xrange(rt.log.key)
    body = json.loads(fields[b"body"])
    assert fields[b"type"] == b"edit" and body["note"] == "audit" and body["pre"] and body["time"]
    header_len = int.from_bytes(fields[b"delta"][:8], "little")  # a safetensors header: JSON, then raw tensors
    assert json.loads(fields[b"delta"][8: 8 + header_len])["__metadata__"]["format"] == "mend-lowrank-delta"


def test_unreachable_redis_at_startup_is_a_clear_failure(settings, tmp_path: Path):
    missing = f"unix://{tmp_path / 'nothing-here.sock'}"
    with pytest.raises(RuntimeError, match="cannot replay the edit log: Redis is unreachable"):
        with serving(settings.model_copy(update={"redis_url": missing})):
            pass
