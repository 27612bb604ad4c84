"""The edit log: one Redis Stream per (base model, editor), append-only, read in order by every replica.

Each event is one XADD, made by a script that first checks that the stream still ends at the event the writer's
state was computed on (compare-and-set), so no event is ordered after one it was not computed against. Fields:
`type` (edit | rollback), the three fingerprints, `body` (JSON) and, for edits, `delta` (the LowRankDelta as
safetensors bytes). Nothing here ever deletes or trims the stream.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from editor_core import LowRankDelta, safetensors_metadata

from .errors import LogOutcomeUnknown, LogUnavailable

EDIT, ROLLBACK = "edit", "rollback"

# KEYS[1]: the stream; ARGV[1]: the id of the last event the writer applied ("0": none); ARGV[2..]: the fields.
# One script runs atomically: nothing can be appended between the check and the XADD.
APPEND_IF_AT = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local at = '0'
if #last > 0 then at = last[1][1] end
if at ~= ARGV[1] then return {0, at} end
return {1, redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))}
"""
# The same for several events at once (a bulk import): ARGV[2..] holds each event as its field count then its
# fields. Returns {1, id of the last}. Nothing else runs between the check and the XADDs; an XADD of well-formed
# fields does not fail, and were one to, the events before it stay (each is whole, and idempotent by its key).
APPEND_MANY_IF_AT = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local at = '0'
if #last > 0 then at = last[1][1] end
if at ~= ARGV[1] then return {0, at} end
local i, id = 2, at
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return {1, id}
"""


# The turn: a ticket lock over Redis, so replicas that edit at once take turns in the order they asked instead of
# racing (a loser of the compare-and-set recomputes for nothing, and one replica could lose every race under
# steady load from another). KEYS: next ticket, ticket served, when it started being served (ms), lease (the
# holder's ticket, expiring). The lock is an optimisation of fairness only: the compare-and-set append keeps the
# log right whatever the turn does.
TAKE_TICKET = """
local t = redis.call('INCR', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[2], t)
  redis.call('SET', KEYS[3], now[1] * 1000 + math.floor(now[2] / 1000))
end
return t
"""
# ARGV: my ticket, lease ms, grace ms. 1: my turn (lease taken); 0: wait; -1: my ticket was passed over.
# A ticket whose owner never shows up (killed while waiting) or whose lease ran out (killed while holding) is
# passed over once it has been served for `grace` ms with no live lease.
POLL_TURN = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local s = tonumber(redis.call('GET', KEYS[2]) or '0')
local mine = tonumber(ARGV[1])
if s == mine then
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
  return 1
end
if s > mine then return -1 end
if redis.call('GET', KEYS[4]) ~= tostring(s) and \
ms - tonumber(redis.call('GET', KEYS[3]) or '0') > tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], s + 1)
  redis.call('SET', KEYS[3], ms)
end
return 0
"""
# ARGV: my ticket. Passes the turn on, if it is still mine.
END_TURN = """
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return 0 end
local now = redis.call('TIME')
redis.call('SET', KEYS[2], tonumber(ARGV[1]) + 1)
redis.call('SET', KEYS[3], now[1] * 1000 + math.floor(now[2] / 1000))
redis.call('DEL', KEYS[4])
return 1
"""
TURN_POLL_S = 0.02
TURN_LEASE_MS = 10_000  # longer than an edit's compute; a holder killed mid-turn blocks the others this long
TURN_GRACE_MS = 2_000  # how long a ticket's owner has to notice its turn before it is passed over


class LogMoved(Exception):
    """The stream holds events the writer has not applied: it must catch up and compute its event again."""


def log_fingerprint(model_fp: str, editor_fp: str) -> str:
    return hashlib.sha256(f"{model_fp}:{editor_fp}".encode()).hexdigest()[:16]


def stream_key(log_fp: str) -> str:
    return f"mend:log:{log_fp}"


def checkpoint_key(log_fp: str) -> str:
    return f"mend:ckpt:{log_fp}"


@dataclass
class Checkpoint:
    """The edited weights exactly as they were after the event `event_id` (log position `version`).

    Derived from the log, never a source of truth: restart restores it instead of re-applying every earlier
    delta (a few ms each), and ignores it unless the stream still holds `event_id` at position `version`.
    """

    event_id: str
    version: int
    weights: dict[str, torch.Tensor]


@dataclass
class Event:
    type: str
    model_fp: str
    editor_fp: str
    log_fp: str
    body: dict
    delta: bytes | None = None  # edit events only: parsed on apply, so only safetensors is ever decoded
    id: str = field(default="", compare=False)  # the stream id, known once written

    def fields(self) -> dict[str, bytes]:
        out = {"type": self.type, "model": self.model_fp, "editor": self.editor_fp, "log": self.log_fp,
               "body": json.dumps(self.body, sort_keys=True)}
        out = {k: v.encode() for k, v in out.items()}
        if self.delta is not None:
            out["delta"] = self.delta
        return out

    @classmethod
    def parse(cls, event_id: bytes, raw: dict[bytes, bytes]) -> Event:
        text = {k.decode(): v.decode() for k, v in raw.items() if k != b"delta"}
        return cls(text.get("type", ""), text.get("model", ""), text.get("editor", ""), text.get("log", ""),
                   json.loads(text.get("body", "{}")), raw.get(b"delta"), event_id.decode())

    def load_delta(self) -> LowRankDelta:
        return LowRankDelta.from_bytes(self.delta or b"")


class EditLog:
    """Thin wrapper over the stream: Redis failures surface as LogUnavailable (nothing written) or, for a write
    that may have landed, LogOutcomeUnknown (both 503); never half-writes."""

    def __init__(self, url: str, log_fp: str) -> None:
        self.key, self.ckpt_key, self.turn_key = stream_key(log_fp), checkpoint_key(log_fp), f"mend:turn:{log_fp}"
        self._unreturned: list[int] = []  # tickets of turns whose return did not reach Redis
        self.url = url
        # Short timeouts: a dead Redis must turn /edit into a quick 503, not a hung request.
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)

    @contextmanager
    def turn(self, wait_s: float) -> Iterator[bool]:
        """Wait for this writer's turn among all replicas (first come, first served), at most `wait_s`; yields
        whether it got it. Without it the writer goes ahead anyway: the compare-and-set append keeps the log
        right, and a turn that cannot come (Redis trouble past the first call) must not stop every edit."""
        if wait_s <= 0:
            yield False
            return
        keys = [f"{self.turn_key}:{k}" for k in ("next", "serving", "since", "lease")]
        # A turn whose return failed (Redis went away during it) still holds up every writer until its lease
        # runs out, this replica's next edit included: return it first (after a Redis restart: 30 s -> 0).
        for old in list(self._unreturned):
            with contextlib.suppress(redis.RedisError):
                self.client.eval(END_TURN, 4, *keys, old)
                self._unreturned.remove(old)
        try:
            ticket = self.client.eval(TAKE_TICKET, 4, *keys)
        except redis.RedisError as e:
            raise LogUnavailable() from e
        got, deadline = 0, time.monotonic() + wait_s
        try:
            while time.monotonic() < deadline:
                got = self.client.eval(POLL_TURN, 4, *keys, ticket, TURN_LEASE_MS, TURN_GRACE_MS)
                if got == -1:  # passed over (this process stalled past the grace): queue again
                    ticket = self.client.eval(TAKE_TICKET, 4, *keys)
                elif got == 1:
                    break
                time.sleep(TURN_POLL_S)
        except redis.RedisError:
            got = 0
        try:
            yield got == 1
        finally:
            try:
                self.client.eval(END_TURN, 4, *keys, ticket)
            except redis.RedisError:  # returned at this replica's next turn, or the lease runs out first
                self._unreturned.append(ticket)

    def append(self, event: Event, after: str) -> str:
        """Write `event` if the stream's last event is still `after`, else raise LogMoved; returns its id.

        Sent once, without redis-py's retries: a write resent after a timeout may be a second copy of one that
        landed. A failure to connect sent nothing (LogUnavailable); a failure once the script is on its way
        leaves the outcome unknown (LogOutcomeUnknown).
        """
        fields = [x for pair in event.fields().items() for x in pair]
        return self._append_script(APPEND_IF_AT, after, fields)

    def append_many(self, events: list[Event], after: str) -> str:
        """`append` of several events in one step, none if the stream moved (LogMoved). Returns the last one's id."""
        args: list = []
        for event in events:
            fields = [x for pair in event.fields().items() for x in pair]
            args += [len(fields), *fields]
        return self._append_script(APPEND_MANY_IF_AT, after, args)

    def _append_script(self, script: str, after: str, args: list) -> str:
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()  # connected and checked here, before anything is sent
        except redis.RedisError as e:
            raise LogUnavailable() from e
        try:
            conn.send_command("EVAL", script, 1, self.key, after, *args)
            written, at = conn.read_response()
        except redis.ResponseError as e:  # the server refused the script: it wrote nothing
            raise LogUnavailable(f"{LogUnavailable.message} ({e})") from e
        except redis.RedisError as e:
            conn.disconnect()  # a reply may still be on its way: the next command must not read it as its own
            raise LogOutcomeUnknown() from e
        finally:
            pool.release(conn)
        if not written:
            raise LogMoved(at.decode())
        return at.decode()

    def read_after(self, last_id: str, page: int = 200) -> list[Event]:
        """Every event after `last_id` ("0" = from the start), in stream order.

        Paged: one XRANGE of a long log would be hundreds of MB in a single reply, past the socket timeout.
        """
        events: list[Event] = []
        try:
            while True:
                rows = self.client.xrange(self.key, min=f"({last_id}" if last_id != "0" else "-", count=page)
                events += [Event.parse(i, raw) for i, raw in rows]
                if len(rows) < page:
                    return events
                last_id = events[-1].id
        except redis.RedisError as e:
            raise LogUnavailable() from e

    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        meta = {"event_id": ckpt.event_id, "version": str(ckpt.version), "log": self.key}
        data = st_save({n: w.detach().contiguous().cpu() for n, w in ckpt.weights.items()}, metadata=meta)
        try:
            self.client.set(self.ckpt_key, data)
        except redis.RedisError as e:
            raise LogUnavailable() from e

    def load_checkpoint(self) -> Checkpoint | None:
        try:
            data = self.client.get(self.ckpt_key)
        except redis.RedisError as e:
            raise LogUnavailable() from e
        if not data:
            return None
        meta = safetensors_metadata(data)
        if meta.get("log") != self.key:
            return None
        return Checkpoint(meta["event_id"], int(meta["version"]), st_load(data))

    def wait_for_new(self, client: redis.Redis, last_id: str, block_ms: int) -> bool:
        """Block until an event after `last_id` exists (or the timeout); the follower's own connection."""
        return bool(client.xread({self.key: last_id}, count=1, block=block_ms))

    def ping(self) -> bool:
        """Whether the log can be read now: a real read of the stream on the request connection, not a cached
        state, so /ready turns 503 the moment Redis stops answering."""
        try:
            self.client.xlen(self.key)
            return True
        except redis.RedisError:
            return False

    def other_logs(self) -> list[str]:
        """Streams of other model/editor pairs: their edits do not apply here, which an operator should know."""
        keys = [k.decode() for k in self.client.scan_iter(match="mend:log:*", count=1000)]
        return sorted(k for k in keys if k != self.key)

    def close(self) -> None:
        self.client.close()
