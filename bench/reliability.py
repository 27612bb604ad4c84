"""Issue 13: does the service keep every acknowledged edit, and only whole ones, through a killed server, a killed
Redis, two replicas on one log and concurrent clients; and does any generated request get a 5xx? Real `mend serve`
processes on 127.0.0.1 at the service's default settings (scoped edits, embedded Redis), on the tiny random model
unless --model/--editor name another: these figures are about the log, Redis and the processes, and the real model
only makes every cycle longer.

    python -m bench.reliability                 # 20 kill -9 cycles, 3 Redis kills, 100 edits on two replicas,
                                                # 300 s of 16 mixed clients, schemathesis at 20 examples per operation
    python -m bench.reliability --smoke         # a few of each: the mechanics (tests/bench/test_reliability.py)
    python -m bench.reliability --model smollm2 --editor weights/smollm2

1. kill -9 of the server while one client streams edits, then a restart on the same data folder. Every edit
   acknowledged (201) in any cycle so far must be listed and active (`lost`). No event may be half-applied: the log
   positions 1..version must be exactly the versions of the edit events plus those of the rollback events, and the
   active count must agree (`half_applied`). The edits whose answer the kill cut off are retried with their
   Idempotency-Key: whether or not they had landed, each is then in the log once (`duplicated`: an edit's note is
   its key). A second restart, with no write since the first, must report the same weights hash and version.
2. kill -9 of the embedded redis-server (a child of the server) during a stream of edits: edits must resume without
   help (the server restarts its Redis). The client retries a 503 or a dropped connection with the same key. We
   measure the seconds from the kill to the first 201 of a request sent after it, and count acknowledged edits lost.
3. Two replicas on one external Redis, 8 clients alternating between them: each edit has its own key, and a 503 or a
   dropped connection is retried with that key on the other replica. Once both are at one version, their weights
   hashes must be equal, every acknowledged edit must be listed by both, and no key may be logged twice.
4. 16 clients mixing /generate, /edit and /rollback for a bounded time: no 5xx and no connection error. A 409 or 404
   from rolling back an edit that another client just rolled back is an outcome of the race, counted apart. A read is
   torn when its version goes backwards for its client (after its own acknowledged writes too) or is above v0 plus
   the writes sent so far, since each write adds at most one event and an event exists only once its request was
   sent. A version above the last *acknowledged* write is not torn: the server applies an event before the writer's
   201 reaches it. Those reads are counted apart (`ahead_of_ack`).
5. schemathesis's CLI against the live server's /openapi.json (not_a_server_error, bounded examples): the 5xx count
   from its HAR report.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import httpx
import redis
import typer

from service.embedded_redis import PIDFILE, EmbeddedRedis

from .common import (
    OUT,
    Profile,
    Server,
    command_line,
    edit_pairs,
    generation_prompts,
    launch,
    make_profile,
    save,
    serving,
    setup_logging,
    stop,
    summary,
    tiny_model_and_editor,
    wait_ready,
)

log = logging.getLogger("bench.reliability")

# launch() fixes the in-place method and the profile's token limit for the other benchmarks; these are the
# service's own defaults, which this benchmark is about.
DEFAULTS = {"MEND_METHOD": "scoped", "MEND_MAX_NEW_TOKENS": "256"}
REQUEST_TIMEOUT = 120.0  # the real model under 16 clients on two cores; a request slower than this is an error
KILL_WINDOW_S = 2.0  # the kill comes at most this long after the cycle's first 201: several tiny-model edits
RETRY_PAUSE_S = 0.1  # between retries of one key: Redis is back within ~0.5 s
RETRY_FOR_S = 120.0  # and at most this long per key: longer is an outage, not a restart
RECOVERY_LIMIT_S = 60.0  # part 2 gives up waiting for edits to resume after this
CATCH_UP_LIMIT_S = 120.0  # part 3 gives up waiting for the replicas to reach one version after this


@dataclass(frozen=True)
class Sizes:
    cycles: int
    redis_kills: int
    replica_edits: int
    seconds: float
    clients: int
    fuzz_examples: int


FULL = Sizes(cycles=20, redis_kills=3, replica_edits=100, seconds=300.0, clients=16, fuzz_examples=20)
SMOKE = Sizes(cycles=3, redis_kills=1, replica_edits=10, seconds=15.0, clients=16, fuzz_examples=3)


# ---- HTTP ----------------------------------------------------------------------------------------------------
# Raw httpx here, not service/client.py: the figures are the status of every single try (None when no answer came),
# and the retries with a key are the experiment itself; the client's own retries would hide both.

def post(http: httpx.Client, path: str, body: dict, key: str | None = None) -> tuple[int | None, dict]:
    """(status, JSON body); status None when no answer came (refused, reset, timed out)."""
    try:
        r = http.post(path, json=body, headers={"Idempotency-Key": key} if key else None)
    except httpx.TransportError as e:
        return None, {"detail": type(e).__name__}
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"detail": r.text[:200]}


@dataclass
class Attempt:
    """One intended edit and what its tries got back. Its note is its key, so the log shows whose event is whose."""

    key: str
    body: dict
    statuses: list[int | None] = field(default_factory=list)
    edit_id: str | None = None  # from the 201
    version: int | None = None
    last_sent: float = 0.0  # monotonic time of the last try
    acked_at: float | None = None

    @property
    def unanswered(self) -> bool:
        return self.edit_id is None and self.statuses[-1:] in ([None], [503])


def new_attempt(pair: dict) -> Attempt:
    key = uuid.uuid4().hex
    return Attempt(key, {**pair, "author": "bench.reliability", "note": key})


def try_edit(http: httpx.Client, a: Attempt) -> int | None:
    a.last_sent = time.monotonic()
    status, body = post(http, "/edit", a.body, a.key)
    a.statuses.append(status)
    if status == 201:
        a.edit_id, a.version, a.acked_at = body["edit_id"], body["version"], time.monotonic()
    return status


class EditStream(threading.Thread):
    """One client sending edits back to back until stopped. With `retry`, an edit that got a 503 or no answer is
    resent with its key until it gets any other answer; without, a dropped connection ends the stream (the server
    is gone, and the retries wait for its restart)."""

    def __init__(self, url: str, pairs: Iterator[dict], retry: bool) -> None:
        super().__init__(name="edit-stream", daemon=True)
        self.url, self.pairs, self.retry = url, pairs, retry
        self.attempts: list[Attempt] = []
        self.halt = threading.Event()
        self.first_ack = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT) as http:
            while not self.halt.is_set():
                a = new_attempt(next(self.pairs))
                self.attempts.append(a)
                given_up = time.monotonic() + RETRY_FOR_S
                while True:
                    status = try_edit(http, a)
                    if status == 201:
                        self.first_ack.set()
                    if status not in (None, 503) or self.halt.is_set():
                        break
                    if not self.retry:
                        return
                    if time.monotonic() > given_up:
                        break
                    time.sleep(RETRY_PAUSE_S)

    def finish(self) -> None:
        self.halt.set()
        self.join(REQUEST_TIMEOUT + 5)

    def acked(self) -> list[Attempt]:
        return [a for a in self.attempts if a.edit_id is not None]


# ---- what a server's log says --------------------------------------------------------------------------------

@dataclass
class Audit:
    """/ready and the whole /edits listing of one server, read while nothing writes."""

    ready: int  # /ready's status: 200, or 503 with the same fields
    version: int
    weights: str
    active_edits: int
    log_key: str
    entries: list[dict]

    def half_applied(self) -> bool:
        """Every log position is one event: an edit (its entry's version) or a rollback (the version its entries
        record). A gap, a repeat or an active count that disagrees means an event was half-applied."""
        rollbacks = {e["rollback"]["version"] for e in self.entries if e["status"] == "rolled_back"}
        positions = sorted([e["version"] for e in self.entries] + list(rollbacks))
        active = sum(e["status"] == "active" for e in self.entries)
        return positions != list(range(1, self.version + 1)) or active != self.active_edits

    def status_of(self) -> dict[str, str]:
        return {e["edit_id"]: e["status"] for e in self.entries}

    def duplicated(self) -> int:
        """Events beyond the first for one Idempotency-Key (the note of every edit this benchmark sends)."""
        return sum(n - 1 for n in Counter(e["note"] for e in self.entries).values())

    def notes(self) -> set[str]:
        return {e["note"] for e in self.entries}


def audit(url: str) -> Audit:
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as http:
        ready = http.get("/ready")
        state = ready.json()
        entries: list[dict] = []
        while True:  # bounded by the count the first page reports
            page = http.get("/edits", params={"offset": len(entries), "limit": 500}).raise_for_status().json()
            entries += page["data"]
            if not page["data"] or len(entries) >= page["count"]:
                break
    return Audit(ready.status_code, state["version"], state["weights"], state["active_edits"], state["log_key"],
                 entries)


def lost(a: Audit, acked: list[Attempt]) -> list[str]:
    """Acknowledged edits not listed as active (for runs that never roll back)."""
    status = a.status_of()
    return [x.edit_id for x in acked if status.get(x.edit_id) != "active"]


def edit_pool(offset: int) -> Iterator[dict]:
    """Edits without end: a prompt may come round again, which the service takes as a new edit."""
    return itertools.cycle(edit_pairs(500, offset))


def start(p: Profile, data: Path, logfile: Path, **settings: str) -> tuple[Server, float]:
    s = launch(p, data, logfile, **{**DEFAULTS, **settings})
    return s, wait_ready(s)


# ---- 1. kill -9 of the server --------------------------------------------------------------------------------

def kill_cycles(p: Profile, cycles: int, rng: random.Random, work: Path) -> dict:
    data, logs = work / "kill9" / "data", work / "kill9"
    pairs = edit_pool(0)
    acked: list[Attempt] = []  # over every cycle so far: a later crash must not lose an earlier edit either
    rows = []
    server, _ = start(p, data, logs / "server-0.log")
    try:
        for c in range(1, cycles + 1):
            stream = EditStream(server.url, pairs, retry=False)
            stream.start()
            stream.first_ack.wait(REQUEST_TIMEOUT)
            time.sleep(rng.uniform(0, KILL_WINDOW_S))
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            stream.finish()
            acked += stream.acked()
            row, server = restart_twice(p, data, logs, c, acked, [a for a in stream.attempts if a.unanswered])
            rows.append({"cycle": c, "acked": len(stream.acked()), **row})
            log.info("kill -9 cycle %d/%d: %s", c, cycles, rows[-1])
    finally:
        stop(server)
    total = lambda key: sum(r[key] for r in rows)  # noqa: E731
    return {"cycles": cycles, "acknowledged": len(acked), "lost": total("lost"), "half_applied": total("half_applied"),
            "duplicated": max(r["duplicated"] for r in rows),
            "unacknowledged_in_log": max(r["unacknowledged_in_log"] for r in rows),
            "hash_mismatches": sum(not r["hash_equal"] for r in rows), "cut_off": total("cut_off"),
            "cut_off_landed": total("cut_off_landed"), "retries_not_201": total("retries_not_201"),
            "restart_s": summary([r["restart_s"] for r in rows]), "rows": rows}


def restart_twice(p: Profile, data: Path, logs: Path, c: int, acked: list[Attempt],
                  cut_off: list[Attempt]) -> tuple[dict, Server]:
    """Restart after the kill and check; retry the edits the kill cut off; restart once more with no write in
    between and compare. Returns the checks and the second server, which serves the next cycle."""
    first, restart_s = start(p, data, logs / f"server-{c}a.log")
    try:
        after_kill = audit(first.url)
        gone = lost(after_kill, acked)
        # A cut-off edit may or may not be in the log already; retried with its key, it must end up there once.
        landed = sum(a.key in after_kill.notes() for a in cut_off)
        with httpx.Client(base_url=first.url, timeout=REQUEST_TIMEOUT) as http:
            retried = [try_edit(http, a) for a in cut_off]
        acked.extend(a for a in cut_off if a.edit_id is not None)
        settled = audit(first.url)
    finally:
        stop(first)
    second, _ = start(p, data, logs / f"server-{c}b.log")
    again = audit(second.url)
    return {"cut_off": len(cut_off), "cut_off_landed": landed, "retries_not_201": sum(s != 201 for s in retried),
            "lost": len(gone),
            "half_applied": sum(x.half_applied() for x in (after_kill, settled, again)),
            "duplicated": again.duplicated(), "unacknowledged_in_log": len(again.notes() - {a.key for a in acked}),
            "hash_equal": (settled.weights, settled.version) == (again.weights, again.version),
            "version": again.version, "restart_s": restart_s}, second


# ---- 2. kill -9 of the embedded Redis ------------------------------------------------------------------------

def embedded_redis_pid(server: Server, data: Path) -> int:
    """The pid in the embedded Redis's pid file, once it is a live redis-server child of this server: never a pid
    of anything else."""
    pidfile = data / "redis" / PIDFILE
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while time.monotonic() < deadline:
        try:
            pid = int(pidfile.read_text().strip())
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid == server.proc.pid and Path(os.readlink(f"/proc/{pid}/exe")).name == "redis-server":
                return pid
        except (OSError, ValueError, IndexError):
            pass  # not written yet, or a server that just died
        time.sleep(0.05)
    raise RuntimeError(f"no live embedded redis-server child of {server.proc.pid} in {pidfile}")


def kill_redis(p: Profile, kills: int, rng: random.Random, work: Path) -> dict:
    data = work / "redis-kill" / "data"
    with serving(p, data, work / "redis-kill" / "server.log", **DEFAULTS) as s:
        stream = EditStream(s.url, edit_pool(1000), retry=True)
        stream.start()
        rows = []
        try:
            for k in range(1, kills + 1):
                stream.first_ack.clear()
                stream.first_ack.wait(REQUEST_TIMEOUT)  # edits flow (again) before the next kill
                time.sleep(rng.uniform(0, KILL_WINDOW_S))
                pid = embedded_redis_pid(s, data)
                killed_at = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                deadline = killed_at + RECOVERY_LIMIT_S
                while time.monotonic() < deadline and not any(
                        a.acked_at is not None and a.last_sent > killed_at for a in stream.attempts[-5:]):
                    time.sleep(0.02)
                back = [a.acked_at for a in stream.attempts if a.acked_at is not None and a.last_sent > killed_at]
                new_pid = embedded_redis_pid(s, data)
                rows.append({"kill": k, "recovery_s": (min(back) - killed_at) if back else None,
                             "new_pid": new_pid != pid})
                log.info("redis kill %d/%d: %s", k, kills, rows[-1])
        finally:
            stream.finish()
        after = audit(s.url)
    statuses = Counter(st for a in stream.attempts for st in a.statuses)
    recovered = [r["recovery_s"] for r in rows if r["recovery_s"] is not None]
    return {"kills": kills, "acknowledged": len(stream.acked()), "lost": len(lost(after, stream.acked())),
            "half_applied": int(after.half_applied()), "duplicated": after.duplicated(),
            "not_resumed": kills - len(recovered), "recovery_s": recovered,
            "recovery_max_s": max(recovered) if recovered else None,
            "answers_503": statuses[503], "no_answer": statuses[None],
            "other_5xx": sum(n for st, n in statuses.items() if st is not None and st >= 500 and st != 503),
            "ready_after": after.ready, "rows": rows}


# ---- 3. two replicas on one Redis ----------------------------------------------------------------------------

def replicas(p: Profile, n: int, work: Path, clients: int = 8) -> dict:
    base = work / "replicas"
    shutil.rmtree(base / "redis", ignore_errors=True)
    shared = EmbeddedRedis(base / "redis").start()  # the external Redis of both: REDIS_URL, a unix socket
    servers: list[Server] = []
    try:
        servers = [launch(p, base / f"data-{x}", base / f"server-{x}.log", **DEFAULTS, REDIS_URL=shared.url)
                   for x in "ab"]
        for s in servers:
            wait_ready(s)
        attempts = [new_attempt(pair) for pair in itertools.islice(edit_pool(2000), n)]
        jobs = iter(enumerate(attempts))
        jobs_lock = threading.Lock()

        def client() -> None:
            https = [httpx.Client(base_url=s.url, timeout=REQUEST_TIMEOUT) for s in servers]
            try:
                while True:
                    with jobs_lock:
                        j, a = next(jobs, (None, None))
                    if a is None:
                        return
                    given_up = time.monotonic() + RETRY_FOR_S
                    for t in itertools.count():  # alternate replicas, retries on the other one first
                        status = try_edit(https[(j + t) % 2], a)
                        if status not in (None, 503) or time.monotonic() > given_up:
                            break
                        time.sleep(RETRY_PAUSE_S)
            finally:
                for h in https:
                    h.close()

        t0 = time.monotonic()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(n * REQUEST_TIMEOUT)
        sent_s = time.monotonic() - t0
        acked = [a for a in attempts if a.edit_id is not None]
        stream = redis.Redis.from_url(shared.url)
        deadline = time.monotonic() + CATCH_UP_LIMIT_S
        while True:  # both followers reach the end of the log, as Redis itself counts it
            views = [audit(s.url) for s in servers]
            end = stream.xlen(views[0].log_key)
            if all(v.version == end for v in views) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        stream.close()
        caught_up_s = time.monotonic() - t0 - sent_s
    finally:
        for s in servers:
            stop(s)
        shared.stop()
    keys = {a.key for a in acked}
    statuses = Counter(st for a in attempts for st in a.statuses)
    return {"edits": n, "clients": clients, "acknowledged": len(acked), "send_s": sent_s, "caught_up_s": caught_up_s,
            "versions": [v.version for v in views], "log_length": end,
            "hashes_equal": views[0].weights == views[1].weights and views[0].version == views[1].version,
            "lost": max(len(lost(v, acked)) for v in views), "duplicated": max(v.duplicated() for v in views),
            "events_equal_keys": all(len(v.entries) == len(keys) for v in views),
            "unacknowledged_in_log": max(len(v.notes() - keys) for v in views),
            "half_applied": sum(v.half_applied() for v in views),
            "retries": sum(len(a.statuses) - 1 for a in attempts),
            "statuses": {str(k): v for k, v in statuses.items()}}


# ---- 4. 16 clients mixing reads and writes -------------------------------------------------------------------

class Mix:
    """What the clients share: the writes sent and acknowledged so far, and the tallies."""

    def __init__(self, v0: int) -> None:
        self.lock = threading.Lock()
        self.v0 = v0
        self.writes_sent = 0
        self.last_acked = v0
        self.edits: list[str] = []  # acknowledged edit ids: the rollback targets
        self.rolled_back: set[str] = set()  # ids some acknowledged rollback reverted
        self.counts: Counter = Counter()
        self.errors: list[str] = []
        self.torn: list[str] = []
        self.ms: dict[str, list[float]] = {"generate": [], "edit": [], "rollback": []}


def mixed_client(url: str, mix: Mix, rng: random.Random, deadline: float, pairs: list[dict], prompts: list[str],
                 new_tokens: int) -> None:
    seen = mix.v0  # the newest version this client has been answered with
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as http:
        while time.monotonic() < deadline:
            op = rng.choices(["generate", "edit", "rollback"], weights=[0.6, 0.25, 0.15])[0]
            with mix.lock:
                targets = list(mix.edits)
                if op == "rollback" and not targets:
                    op = "edit"
                if op != "generate":
                    mix.writes_sent += 1
            if op == "generate":
                pair = rng.choice(pairs)  # edited prompts (a scoped edit is selected) and untouched ones
                body = ({"messages": [{"role": "user", "content": pair["prompt"]}]} if rng.random() < 0.25
                        else {"prompt": rng.choice([pair["prompt"], rng.choice(prompts)])})
                body["max_new_tokens"] = new_tokens
            elif op == "edit":
                body = {**rng.choice(pairs), "author": "bench.reliability", "note": uuid.uuid4().hex}
            else:
                body = {"edit_id": rng.choice(targets), "author": "bench.reliability"}
            t0 = time.perf_counter()
            status, out = post(http, f"/{op}", body)
            ms = (time.perf_counter() - t0) * 1000
            with mix.lock:
                mix.counts[f"{op} {status}"] += 1
                if status is None or status >= 500:
                    mix.errors.append(f"{op} {status}: {out.get('detail')}")
                    continue
                mix.ms[op].append(ms)
                v = out.get("version") if status in (200, 201) else None
                if v is None:
                    continue
                if op == "generate":
                    bound = mix.v0 + mix.writes_sent
                    if v < seen or v > bound:
                        mix.torn.append(f"version {v}: client had seen {seen}, at most {bound} could exist")
                    mix.counts["ahead_of_ack"] += v > mix.last_acked
                else:
                    mix.last_acked = max(mix.last_acked, v)
                    if op == "edit":
                        mix.edits.append(out["edit_id"])
                    else:
                        mix.rolled_back.update(out["rolled_back"])
                    if v < seen:
                        mix.torn.append(f"{op} acknowledged at version {v} after the client had seen {seen}")
                seen = max(seen, v)


def mixed_load(p: Profile, seconds: float, clients: int, rng: random.Random, work: Path) -> dict:
    pairs, prompts = edit_pairs(50, 3000), generation_prompts(20)
    new_tokens = max(p.new_tokens, 8)
    with serving(p, work / "mixed" / "data", work / "mixed" / "server.log", **DEFAULTS) as s:
        mix = Mix(audit(s.url).version)
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=mixed_client, daemon=True, args=(
            s.url, mix, random.Random(rng.random()), deadline, pairs, prompts, new_tokens)) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT + 5)
        after = audit(s.url)
    status = after.status_of()
    # A write is lost when its acknowledgement and the log disagree: an acknowledged edit missing, or listed in
    # the other state than the acknowledged rollbacks say.
    wrong = [i for i in mix.edits if status.get(i) != ("rolled_back" if i in mix.rolled_back else "active")]
    c = mix.counts
    writes_ok = c["edit 201"] + c["rollback 200"]
    return {"seconds": seconds, "clients": clients, "max_new_tokens": new_tokens,
            "requests": sum(n for k, n in c.items() if k != "ahead_of_ack"),
            "generate": sum(n for k, n in c.items() if k.startswith("generate ")),
            "edit": sum(n for k, n in c.items() if k.startswith("edit ")),
            "rollback": sum(n for k, n in c.items() if k.startswith("rollback ")),
            "errors": len(mix.errors), "error_samples": mix.errors[:10],
            "rollback_409": c["rollback 409"], "rollback_404": c["rollback 404"], "refused_422": c["edit 422"],
            "torn_reads": len(mix.torn), "torn_samples": mix.torn[:10], "ahead_of_ack": c["ahead_of_ack"],
            "lost": len(wrong), "half_applied": int(after.half_applied()),
            "version_accounted": after.version == mix.v0 + writes_ok,
            "latency_ms": {op: summary(ms) for op, ms in mix.ms.items() if ms},
            "counts": {k: n for k, n in sorted(c.items())}}


# ---- 5. schemathesis ------------------------------------------------------------------------------------------

def fuzz(p: Profile, examples: int, work: Path) -> dict:
    har = work / "fuzz" / "schemathesis.har.json"
    har.parent.mkdir(parents=True, exist_ok=True)
    har.unlink(missing_ok=True)
    with serving(p, work / "fuzz" / "data", work / "fuzz" / "server.log", **DEFAULTS) as s:
        cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{s.url}/openapi.json",
               "--checks", "not_a_server_error", "--max-examples", str(examples), "--workers", "1", "--seed", "0",
               "--generation-database", "none", "--request-timeout", str(REQUEST_TIMEOUT), "--no-color",
               "--report", "har", "--report-har-path", str(har)]
        t0 = time.monotonic()
        # Run where its crash cache (.schemathesis/) lands in the work folder, not in the repository
        run = subprocess.run(cmd, cwd=har.parent, capture_output=True, text=True, timeout=3600, check=False)
        elapsed = time.monotonic() - t0
    (work / "fuzz" / "schemathesis.out").write_text(run.stdout + run.stderr)
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    statuses = Counter(e["response"]["status"] for e in entries)
    shown = ["schemathesis", "run", "http://127.0.0.1:PORT/openapi.json", *cmd[3:-4]]  # without the report's path
    return {"examples_per_operation": examples, "requests": len(entries),
            "server_errors": sum(n for st, n in statuses.items() if st >= 500),
            "no_response": statuses[0],  # HAR's status for a request that got no response
            "exit_code": run.returncode, "seconds": elapsed,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "command": " ".join(shown)}


# ---- the run --------------------------------------------------------------------------------------------------

def profile(smoke: bool, model: str | None, editor: str | None, threads: int | None, out: Path | None) -> Profile:
    if model is None and editor is None:  # one tiny model for every output folder: built once, not once per test
        model, editor = (str(x) for x in tiny_model_and_editor(OUT / "smoke" / "tiny"))
    return make_profile(smoke, model, editor, threads, out)


def main(smoke: bool = typer.Option(False, help="a few of each (the test); results under bench/out/smoke"),
         cycles: Optional[int] = typer.Option(None, help="kill -9 cycles of the server (default 20; smoke 3)"),
         redis_kills: Optional[int] = typer.Option(None, help="kill -9 of the embedded Redis (default 3; smoke 1)"),
         replica_edits: Optional[int] = typer.Option(None, help="edits sent to two replicas (default 100; smoke 10)"),
         seconds: Optional[float] = typer.Option(None, help="of 16 mixed clients (default 300; smoke 15)"),
         clients: Optional[int] = typer.Option(None, help="mixed clients (default 16)"),
         fuzz_examples: Optional[int] = typer.Option(None, help="schemathesis examples per operation (default 20; "
                                                                "smoke 3)"),
         seed: int = typer.Option(0, help="of the kill moments and the mixed clients' choices"),
         model: Optional[str] = typer.Option(None, help="default: the tiny random model"),
         editor: Optional[str] = None, threads: Optional[int] = None, out: Optional[Path] = None) -> None:
    """Crash, replica, concurrency and fuzzing checks of the service through real servers on 127.0.0.1."""
    setup_logging()
    p = profile(smoke, model, editor, threads, out)
    d = SMOKE if smoke else FULL
    d = Sizes(cycles if cycles is not None else d.cycles, redis_kills if redis_kills is not None else d.redis_kills,
              replica_edits if replica_edits is not None else d.replica_edits,
              seconds if seconds is not None else d.seconds, clients or d.clients,
              fuzz_examples if fuzz_examples is not None else d.fuzz_examples)
    work = p.out / "work" / "reliability"
    shutil.rmtree(work, ignore_errors=True)
    rng = random.Random(seed)
    t0 = time.monotonic()
    results = {"sizes": asdict(d), "seed": seed}
    results["kill9"] = kill_cycles(p, d.cycles, rng, work)
    results["redis_kill"] = kill_redis(p, d.redis_kills, rng, work)
    results["replicas"] = replicas(p, d.replica_edits, work)
    results["mixed"] = mixed_load(p, d.seconds, d.clients, rng, work)
    results["fuzz"] = fuzz(p, d.fuzz_examples, work)
    results["wall_s"] = time.monotonic() - t0
    save(p, "reliability", results, command_line())
    log.info("figures: %s", json.dumps(headline(results)))


def headline(r: dict) -> dict:
    """The figures that must be zero (or true), by part."""
    k, rk, rep, mx, fz = r["kill9"], r["redis_kill"], r["replicas"], r["mixed"], r["fuzz"]
    return {"kill9": {x: k[x] for x in ("lost", "half_applied", "duplicated", "hash_mismatches")},
            "redis_kill": {x: rk[x] for x in ("lost", "half_applied", "duplicated", "not_resumed", "other_5xx")},
            "replicas": {x: rep[x] for x in ("lost", "duplicated", "hashes_equal", "events_equal_keys",
                                             "half_applied")},
            "mixed": {x: mx[x] for x in ("errors", "torn_reads", "lost", "half_applied", "version_accounted")},
            "fuzz": {x: fz[x] for x in ("server_errors", "no_response", "exit_code")}}


if __name__ == "__main__":
    typer.run(main)
