"""The served state kept equal to the edit log: base weights + the active edits, in stream order.

The state changes only in `_apply`, which applies log events in stream order under the write lock, each whole or
not at all: the edit method's weights or codebook, the edit table and the version change together. Startup
replays the log (from the newest usable weights checkpoint); a follower thread then applies the events other
replicas write. Lock order: edit mutex -> sync lock -> write lock; readers never nest.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field

import redis
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor_core import LowRankDelta, MENDEditor, restore, snapshot

from . import snapshot as snapshots
from .editlog import EDIT, ROLLBACK, Checkpoint, EditLog, Event, log_fingerprint
from .embedded_redis import EmbeddedRedis
from .errors import FingerprintMismatch, LogUnavailable, NotReady
from .locks import RWLock
from .methods import METHODS, View
from .settings import Settings

log = logging.getLogger(__name__)

FOLLOW_BLOCK_MS = 500  # how long one XREAD waits; also bounds how long shutdown waits for the follower


@dataclass
class EditEntry:
    """What the log says about one edit: the audit record behind GET /edits (never the raw factors)."""

    edit_id: str
    version: int  # log position of its event (1-based)
    # Its event's body (requests, author, note, time, pre scores, force, rank, bytes) as JSON, read when asked
    # for: held as a dict it is ~4 KB an edit, as text ~0.6 KB.
    raw: str
    author: str  # what listings filter by, without reading every body
    status: str = "active"
    rollback: dict = field(default_factory=dict)  # author, time, version of the rollback event

    @classmethod
    def of(cls, version: int, body: dict) -> EditEntry:
        return cls(body["edit_id"], version, json.dumps(body, sort_keys=True), body["author"])

    @property
    def body(self) -> dict:
        return json.loads(self.raw)


@dataclass(frozen=True)
class Published:
    """A whole version of the served state for requests that read it without a lock: the version and the edit
    method's view of it, assigned together in one statement."""

    version: int
    view: View


class Replica:
    def __init__(self, settings: Settings, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 editor: MENDEditor, model_fp: str, log_url: str) -> None:
        self.settings, self.model, self.tokenizer, self.editor = settings, model, tokenizer, editor
        self.method = METHODS[settings.method](settings, model, tokenizer, editor)  # built on the base weights
        self.model_fp = model_fp
        self.editor_fp = self.method.fingerprint(editor.fingerprint())
        self.log_fp = log_fingerprint(self.model_fp, self.editor_fp)
        self.log = EditLog(log_url, self.log_fp)
        self.layer_names = self.method.layer_names
        self.rw, self.edit_mutex, self.sync_lock = RWLock(), threading.Lock(), threading.Lock()
        self.version, self.last_id = 0, "0"
        self.published = Published(0, self.method.view())
        self.checkpoint_version = 0  # the log position of the newest checkpoint this process knows of
        self.snapshot_version = 0  # the version of the newest snapshot this process wrote or read
        self.edits: dict[str, EditEntry] = {}
        self.active: dict[str, LowRankDelta] = {}  # insertion order = log order
        self.idempotent: dict[str, tuple[str, int]] = {}  # Idempotency-Key -> (body as JSON, version) of its event
        self.error: str | None = None  # set when an event from the log could not be applied
        self.embedded: EmbeddedRedis | None = None
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    def replay(self) -> None:
        if not self.log.ping():
            raise RuntimeError("cannot replay the edit log: Redis is unreachable (REDIS_URL or the embedded server)")
        others = self.log.other_logs()
        if others:
            log.warning("this Redis also holds logs of other model/editor pairs, not applied here: %s", others)
        t0 = time.perf_counter()
        with self.sync_lock:
            if self._restored_snapshot():
                tail = self.log.read_after(self.last_id)
                for event in tail:
                    self._apply(event)
                log.info("restored the snapshot at version %d and applied %d events after it in %.2f s (%d active "
                         "edits)", self.version - len(tail), len(tail), time.perf_counter() - t0, len(self.active))
                self.snapshot_version = self.version - len(tail)
                return
            events = self.log.read_after("0")
            ckpt = self._usable_checkpoint(events)
            start = ckpt.version if ckpt else 0
            for event in events[:start]:  # the edit table only: the checkpoint holds the weights they made
                self._apply(event, write_weights=False)
            if ckpt:
                with self.rw.write():
                    restore(self.model, ckpt.weights)
                self.checkpoint_version = ckpt.version
            for event in events[start:]:
                self._apply(event)
        log.info("replayed %d events of %s in %.2f s (%d active edits; %d events re-applied after the checkpoint "
                 "at version %d)", self.version, self.log.key, time.perf_counter() - t0, len(self.active),
                 len(events) - start, start)
        self.maybe_checkpoint()

    def _restored_snapshot(self) -> bool:
        """Take the newest usable snapshot's state (nothing of it if it is not usable); True if one was taken."""
        checks = self.method.snapshot_checks()
        if not self.settings.snapshot_every or checks is None:
            return False
        snap = snapshots.load(self.settings.data_dir, self.log.key, checks)
        if snap is None:
            return False
        # Its event must still be in this stream: a log deleted and written anew has other events.
        if snap.version and not self.log.client.xrange(self.log.key, min=snap.event_id, max=snap.event_id):
            log.warning("ignoring the snapshot at version %d: its event %s is not in %s (full replay)", snap.version,
                        snap.event_id, self.log.key)
            return False
        with self.rw.write():
            self.active = self.method.restore_state(snap.tensors, snap.codebook)
            self.edits = {e["edit_id"]: EditEntry(**e) for e in snap.replica["edits"]}
            # An edit's body is its entry's own text, as when it was applied ("@<edit id>": `maybe_snapshot`).
            self.idempotent = {k: (self.edits[raw[1:]].raw if raw.startswith("@") else raw, v)
                               for k, (raw, v) in snap.replica["idempotent"].items()}
            self.version, self.last_id = snap.version, snap.event_id
            self.published = Published(self.version, self.method.view())
        return True

    def maybe_snapshot(self, force: bool = False) -> None:
        """Write a snapshot every `snapshot_every` events (or now, with `force`: on shutdown)."""
        every, checks = self.settings.snapshot_every, self.method.snapshot_checks()
        if not every or checks is None or self.version == self.snapshot_version or self.error or (
                not force and self.version - self.snapshot_version < every):
            return
        t0 = time.perf_counter()
        with self.rw.read():  # one whole version
            tensors, info = self.method.snapshot_state()
            entry_of = {id(e.raw): e.edit_id for e in self.edits.values()}  # a body held once, written once
            replica = {"edits": [dataclasses.asdict(e) for e in self.edits.values()],
                       "idempotent": {k: ["@" + entry_of[id(raw)] if id(raw) in entry_of else raw, v]
                                      for k, (raw, v) in self.idempotent.items()}}
            snap = snapshots.Snapshot(self.version, self.last_id, tensors, info, replica)
        try:
            snapshots.save(self.settings.data_dir, self.log.key, checks, snap)
            self.snapshot_version = snap.version
            log.info("snapshot at version %d written in %.2f s", snap.version, time.perf_counter() - t0)
        except OSError as e:
            log.warning("could not write the snapshot at version %d (%s); restarts replay more", snap.version, e)

    def start_following(self) -> None:
        self._follower = threading.Thread(target=self._follow, name="mend-log-follower", daemon=True)
        self._follower.start()

    def _usable_checkpoint(self, events: list[Event]) -> Checkpoint | None:
        ckpt = self.log.load_checkpoint() if self.settings.checkpoint_every else None
        if ckpt is None:
            return None
        params = dict(self.model.named_parameters())
        if not (0 < ckpt.version <= len(events) and events[ckpt.version - 1].id == ckpt.event_id) or any(
                n not in ckpt.weights or ckpt.weights[n].shape != params[n].shape
                or ckpt.weights[n].dtype != params[n].dtype for n in self.layer_names):
            log.warning("ignoring the weights checkpoint of %s: it does not match the log (full replay)", self.log.key)
            return None
        return ckpt

    def maybe_checkpoint(self) -> None:
        """Store the exact edited weights every `checkpoint_every` events, so a restart replays only the tail (and
        a snapshot of the derived state, for methods that keep one)."""
        self.maybe_snapshot()
        every = self.settings.checkpoint_every
        if not every or not self.method.checkpoints or self.version - self.checkpoint_version < every:
            return
        with self.rw.read():
            ckpt = Checkpoint(self.last_id, self.version, snapshot(self.model, self.layer_names))
        try:
            self.log.save_checkpoint(ckpt)
            self.checkpoint_version = ckpt.version
        except LogUnavailable:
            log.warning("could not store the weights checkpoint at version %d; restarts replay more", ckpt.version)

    def close(self) -> None:
        self._stop.set()
        if self._follower:
            self._follower.join(FOLLOW_BLOCK_MS / 1000 + 6)
        self.maybe_snapshot(force=True)
        self.log.close()
        if self.embedded:
            self.embedded.stop()

    def sync(self) -> None:
        """Apply every event after the last applied one, in stream order (ours and other replicas')."""
        with self.sync_lock:
            self._check_usable()  # past an event it cannot apply, a replica applies nothing: order matters
            for event in self.log.read_after(self.last_id):
                try:
                    self._apply(event)
                except Exception as e:  # nothing of it was applied: this replica stays at the version before it
                    self.error = f"stopped following the edit log: cannot apply event {event.id}: {e}"
                    log.exception("cannot apply an edit log event; this replica stays at version %d", self.version)
                    raise NotReady(f"service is not ready: {self.error}") from e

    def _check_usable(self) -> None:
        if self.error:
            raise NotReady(f"service is not ready: {self.error}")

    def _apply(self, event: Event, write_weights: bool = True) -> None:
        fps = (event.log_fp, event.model_fp, event.editor_fp)
        if fps != (self.log_fp, self.model_fp, self.editor_fp):
            raise FingerprintMismatch(
                f"log event {event.id} in {self.log.key} was written for model {event.model_fp} / editor "
                f"{event.editor_fp}, but this server runs model {self.model_fp} / editor {self.editor_fp}: refused")
        if event.type not in (EDIT, ROLLBACK):
            raise ValueError(f"log event {event.id} has unknown type {event.type!r}")
        delta = event.load_delta() if event.type == EDIT else None
        if delta is not None and not set(delta.factors) <= set(self.layer_names):
            raise ValueError(f"log event {event.id} edits parameters the editor does not: {sorted(delta.factors)}")
        # Everything below changes only once nothing can fail: an exception leaves all of it as it was.
        with self.rw.write():
            if delta is not None:
                self.method.apply(event.body["edit_id"], delta, write_weights)
                self.active[event.body["edit_id"]] = self.method.held(event.body["edit_id"], delta)
                self.edits[event.body["edit_id"]] = EditEntry.of(self.version + 1, event.body)
            else:
                self._revert(event, write_weights)
            self.version += 1
            self.last_id = event.id
            self.published = Published(self.version, self.method.view())
            if "idempotency_key" in event.body:  # its body as text, the edit's entry's own where it has one
                raw = self.edits[event.body["edit_id"]].raw if delta is not None else json.dumps(event.body)
                self.idempotent.setdefault(event.body["idempotency_key"], (raw, self.version))

    def _revert(self, event: Event, write_weights: bool) -> None:
        # Two replicas once could roll back the same edit at once, the later event finding it gone (logs from
        # before the compare-and-set append hold such events). Skipping is decided by the log alone, so every
        # replica skips the same ids.
        ids = [i for i in event.body["edit_ids"] if i in self.active]
        for edit_id in set(event.body["edit_ids"]) - set(ids):
            log.warning("log event %s rolls back %s, which is not active: skipped", event.id, edit_id)
        self.method.revert(ids, self.active, write_weights)
        for edit_id in ids:
            del self.active[edit_id]
            self.edits[edit_id].status = "rolled_back"
            self.edits[edit_id].rollback = {"author": event.body.get("author"), "time": event.body.get("time"),
                                            "version": self.version + 1, "note": event.body.get("note", "")}

    def _pin_threads(self) -> None:
        # Under OpenMP, torch.set_num_threads binds only the calling thread: every request thread and the
        # follower must call it, or they run with one thread per core and oversubscribe a small machine.
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)

    def _follow(self) -> None:
        self._pin_threads()
        # Own connection: a blocking XREAD would otherwise hold the request connection.
        client = redis.Redis.from_url(self.log.url, socket_connect_timeout=2, socket_timeout=FOLLOW_BLOCK_MS / 1000 + 5)
        down = False
        while not self._stop.is_set():
            try:
                if self.log.wait_for_new(client, self.last_id, FOLLOW_BLOCK_MS):
                    self.sync()
                if down:
                    log.info("edit log reachable again")
                down = False
            except (redis.RedisError, LogUnavailable) as e:
                if not down:
                    log.warning("edit log unreachable (%s); /generate keeps serving version %d", e, self.version)
                down = True
                self._stop.wait(1.0)
            except Exception as e:  # an event this replica cannot apply (sync logged it), or a bug: keep serving
                if self.error is None:
                    self.error = f"stopped following the edit log: {e}"
                    log.exception("the edit log follower failed; this replica stays at version %d", self.version)
                break
        client.close()

    def readiness(self) -> tuple[bool, str]:
        if self.error:
            return False, self.error
        if self.embedded is not None and not self.embedded.alive():
            return False, "edit log (Redis) unreachable: the embedded server is restarting"
        if not self.log.ping():
            return False, "edit log (Redis) unreachable"
        return True, "ready"
