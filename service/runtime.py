"""The model runtime: one model and editor, the weights kept equal to base + the active deltas of the log.

Weights change only in `_apply`, which applies log events in stream order under the write lock, each whole or not
at all. /edit and /rollback compute their event on the newest state, write it only if the log has not moved since
(compare-and-set; else catch up and compute again) and then catch up with the log; a follower thread catches up
with events other replicas write. Lock order: edit mutex -> sync lock -> write lock; readers never nest.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import redis
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor_core import (
    EditRequest,
    LowRankDelta,
    MENDEditor,
    TargetScore,
    join,
    load_base_model,
    model_fingerprint,
    restore,
    score_targets,
    snapshot,
)
from editor_core.model import DTYPES
from editor_core.scope import CHAT, PLAIN, Scope

from .canary import CanarySet, load_canaries
from .editlog import EDIT, ROLLBACK, Checkpoint, EditLog, Event, LogMoved, log_fingerprint
from .embedded_redis import EmbeddedRedis
from .errors import (
    AlreadyRolledBack,
    BadRequest,
    FingerprintMismatch,
    IdempotencyKeyReused,
    LogContention,
    LogUnavailable,
    NothingToRollBack,
    NotReady,
    UnknownEdit,
)
from .generation import Completion, complete
from .guard import check_edit, check_scoped_edit
from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_NEW_TOKENS = 64
FOLLOW_BLOCK_MS = 500  # how long one XREAD waits; also bounds how long shutdown waits for the follower
# Compare-and-set attempts of one /edit or /rollback. Each lost one means another replica wrote an event meanwhile;
# after this many the request gives up (LogContention) rather than wait behind a busy log without bound.
APPEND_TRIES = 5


class RWLock:
    """Many readers or one writer. A waiting writer holds back new readers, so generations cannot starve an apply."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writer and not self._readers)
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class WeightsView:
    """Named tensors, read as LowRankDelta.updated reads a model: to compute on weights not (yet) written to it."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        self.weights = weights

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.weights.items())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def score_dicts(scores: list[TargetScore]) -> list[dict]:
    return [{"logprob": s.logprob, "exact": s.exact} for s in scores]


def request_digest(kind: str, **request) -> str:
    """What an Idempotency-Key is bound to: a retry must be the same request."""
    return hashlib.sha256(json.dumps({"kind": kind, **request}, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class EditOutcome:
    edit_id: str
    version: int
    pre: list[TargetScore]
    post: list[TargetScore]
    rank: int
    nbytes: int
    elapsed_ms: float
    repeated: bool = False  # the outcome of an earlier request with the same Idempotency-Key; nothing was written


@dataclass(frozen=True)
class RollbackOutcome:
    rolled_back: list[str]
    version: int
    repeated: bool = False


@dataclass
class EditEntry:
    """What the log says about one edit: the audit record behind GET /edits (never the raw factors)."""

    edit_id: str
    version: int  # log position of its event (1-based)
    body: dict  # requests, author, note, time, pre scores, force, rank, bytes
    status: str = "active"
    rollback: dict = field(default_factory=dict)  # author, time, version of the rollback event


def question(messages: list[dict]) -> str:
    """What a chat request is keyed by: its last user message as a plain prompt. The template around it (system
    prompt, role markers) is the same for every request and would make every chat key alike; without it a
    question asked in chat selects the edit made with the same question as a plain prompt, and back."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def load_editor(path: Path, model: PreTrainedModel, model_fp: str) -> MENDEditor:
    if not (path / "editor.json").is_file():
        raise FileNotFoundError(f"no trained editor at {path} (editor.json missing): train one with "
                                f"`mend train` or point MEND_EDITOR at an editor folder")
    editor = MENDEditor.load(path, model).to(model.device)
    if editor.cfg.model_fingerprint and editor.cfg.model_fingerprint != model_fp:
        raise FingerprintMismatch(f"editor {path} was trained for model {editor.cfg.model_fingerprint}, "
                                  f"but the loaded model is {model_fp}: refusing to start")
    return editor


def load_scope(path: Path, editor: MENDEditor) -> Scope:
    if not (path / "scope.json").is_file():
        raise FileNotFoundError(f"MEND_METHOD=scoped needs {path}/scope.json: fit it with `mend fit-scope`")
    return Scope.load(path, editor.layers)


class Runtime:
    def __init__(self, settings: Settings, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 editor: MENDEditor, model_fp: str, log_url: str) -> None:
        self.settings, self.model, self.tokenizer, self.editor = settings, model, tokenizer, editor
        self.model_fp, self.editor_fp = model_fp, editor.fingerprint()
        # Scoped edits (editor_core.scope) never touch the weights; their log is a different log: the scope's
        # fingerprint joins the editor's, so in-place and scoped events can never be replayed into each other.
        self.scope = load_scope(settings.editor, editor) if settings.method == "scoped" else None
        if self.scope is not None:
            self.editor_fp = f"{self.editor_fp}+scope-{self.scope.fingerprint()}"
            self.scope.attach(model)
        self.log_fp = log_fingerprint(self.model_fp, self.editor_fp)
        self.log = EditLog(log_url, self.log_fp)
        self.layer_names = [l.name for l in editor.layers]
        self.base = snapshot(model, self.layer_names)  # what "no active edit" restores, bit for bit
        # Built on the base weights: the log is replayed after this. A scoped guard needs only the prompts' keys.
        self.canaries: CanarySet | None = None
        self.canary_prompts: list[str] | None = None
        self.canary_keys: torch.Tensor | None = None  # candidate keys of the canaries (Scope.candidate_keys) ...
        self.canary_of: list[int] = []  # ... and the canary each is of
        self._load_canaries()
        self.rw, self.edit_mutex, self.sync_lock = RWLock(), threading.Lock(), threading.Lock()
        self.version, self.last_id = 0, "0"
        self.checkpoint_version = 0  # the log position of the newest checkpoint this process knows of
        self.edits: dict[str, EditEntry] = {}
        self.active: dict[str, LowRankDelta] = {}  # insertion order = log order
        self.idempotent: dict[str, tuple[dict, int]] = {}  # Idempotency-Key -> (body, version) of its event
        self.error: str | None = None  # set when an event from the log could not be applied
        self.embedded: EmbeddedRedis | None = None
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._hash: tuple[int, str] = (-1, "")
        self._drift: tuple[int, dict[str, float]] = (-1, {})
        self._agreement: tuple[int, float] = (-1, 1.0)

    def _load_canaries(self) -> None:
        n = self.settings.guard_canaries
        if n == 0:
            log.warning("MEND_GUARD_CANARIES=0: edits are not checked against canaries")
            return
        t0 = time.perf_counter()
        canaries = load_canaries(self.settings.canaries, n)
        if self.scope is not None:
            self.canary_prompts = [c.prompt for c in canaries]
            self.canary_keys, self.canary_of = self.scope.candidate_keys(self.model, self.tokenizer, self.canary_prompts)
            what = "keyed"
        else:
            self.canaries = CanarySet(self.model, self.tokenizer, canaries, min(l.block for l in self.editor.layers))
            what = "answered by the base model"
        log.info("edit guard: %d canaries from %s %s in %.2f s", n, self.settings.canaries, what,
                 time.perf_counter() - t0)

    def _pin_threads(self) -> None:
        # Under OpenMP, torch.set_num_threads binds only the calling thread: every request thread and the
        # follower must call it, or they run with one thread per core and oversubscribe a small machine.
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)

    @classmethod
    def start(cls, settings: Settings) -> "Runtime":
        """Load everything, replay the log, start following it. Any failure stops what was started and raises."""
        embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir / "redis").start()
        try:
            if settings.threads:
                torch.set_num_threads(settings.threads)
            model, tokenizer = load_base_model(settings.model, settings.dtype, settings.device)
            model_fp = model_fingerprint(model)  # of the base weights: before any replay
            editor = load_editor(settings.editor, model, model_fp)
            rt = cls(settings, model, tokenizer, editor, model_fp, settings.redis_url or embedded.url)
            rt.embedded = embedded
            rt.replay()
        except BaseException:
            if embedded:
                embedded.stop()
            raise
        rt._follower = threading.Thread(target=rt._follow, name="mend-log-follower", daemon=True)
        rt._follower.start()
        return rt

    def replay(self) -> None:
        if not self.log.ping():
            raise RuntimeError("cannot replay the edit log: Redis is unreachable (REDIS_URL or the embedded server)")
        others = self.log.other_logs()
        if others:
            log.warning("this Redis also holds logs of other model/editor pairs, not applied here: %s", others)
        t0 = time.perf_counter()
        with self.sync_lock:
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
        """Store the exact edited weights every `checkpoint_every` events, so a restart replays only the tail."""
        every = self.settings.checkpoint_every
        if not every or self.scope is not None or self.version - self.checkpoint_version < every:
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
        self.log.close()
        if self.embedded:
            self.embedded.stop()

    # ---- following the log: the only path that writes weights -------------------------------------------

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
        # Weights (or the scope's codebook), the edit table and the version change together, and only once
        # nothing can fail: an exception leaves all of them as they were.
        with self.rw.write():
            if delta is not None:
                if self.scope is not None:
                    self.scope.add(event.body["edit_id"], delta)  # whole or not at all
                elif write_weights:
                    delta.apply(self.model)  # computes every new matrix before writing any
                self.active[event.body["edit_id"]] = delta
                self.edits[event.body["edit_id"]] = EditEntry(event.body["edit_id"], self.version + 1, event.body)
            else:
                self._revert(event, write_weights)
            self.version += 1
            self.last_id = event.id
            if "idempotency_key" in event.body:
                self.idempotent.setdefault(event.body["idempotency_key"], (event.body, self.version))

    def _revert(self, event: Event, write_weights: bool = True) -> None:
        # Two replicas once could roll back the same edit at once, the later event finding it gone (logs from
        # before the compare-and-set append hold such events). Skipping is decided by the log alone, so every
        # replica skips the same ids.
        ids = [i for i in event.body["edit_ids"] if i in self.active]
        for edit_id in set(event.body["edit_ids"]) - set(ids):
            log.warning("log event %s rolls back %s, which is not active: skipped", event.id, edit_id)
        if self.scope is not None:
            self.scope.remove(*ids)  # all of them or none
        elif write_weights:
            # No active edit left: the base, since apply-then-revert is not exact in floating point.
            left = [i for i in self.active if i not in ids]
            restore(self.model, self._reverted([self.active[i] for i in ids]) if left else self.base)
        for edit_id in ids:
            del self.active[edit_id]
            self.edits[edit_id].status = "rolled_back"
            self.edits[edit_id].rollback = {"author": event.body.get("author"), "time": event.body.get("time"),
                                            "version": self.version + 1, "note": event.body.get("note", "")}

    def _reverted(self, deltas: list[LowRankDelta]) -> dict[str, torch.Tensor]:
        """The edited matrices with each delta subtracted in turn, computed aside: raises (NonFiniteDeltaError or
        any other error) before a single weight is written. Each step is LowRankDelta.updated, the arithmetic of
        `revert`, so the result is bit for bit that of reverting one by one."""
        params = dict(self.model.named_parameters())
        weights = {n: params[n] for n in self.layer_names}
        for delta in deltas:
            weights.update(delta.updated(WeightsView(weights), sign=-1.0))
        return weights

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

    # ---- requests -----------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self.error:
            raise NotReady(f"service is not ready: {self.error}")

    def _check_lengths(self, requests: list[EditRequest], max_total: int | None = None,
                       max_target: int | None = None) -> list[tuple[int, int]]:
        """(prompt, target) token counts of each request; refuses, request by request, a prompt over the prompt
        limit, prompt + target over `max_total` (the editor's window) or a target over `max_target`."""
        limit, counts = self.settings.max_prompt_tokens, []
        for r in requests:
            prompt, target = join(r.prompt, r.target)
            n_prompt = len(self.tokenizer(prompt)["input_ids"])
            n_target = len(self.tokenizer(target, add_special_tokens=False)["input_ids"])
            if n_prompt > limit:
                raise BadRequest(f"prompt is longer than the limit of {limit} tokens")
            if max_total is not None and n_prompt + n_target > max_total:
                raise BadRequest(f"prompt and target together are longer than the editor's limit of {max_total} tokens")
            if max_target is not None and n_target > max_target:
                raise BadRequest(f"target is longer than the limit of {max_target} tokens")
            counts.append((n_prompt, n_target))
        return counts

    def edit(self, requests: list[EditRequest], author: str, note: str, force: bool,
             idempotency_key: str | None = None) -> EditOutcome:
        """Compute one delta for the batch on the newest state, write it to the log, then apply it by catching up
        with the log. With a key already in the log: that edit's outcome, writing nothing."""
        self._pin_threads()
        self._check_usable()
        self._check_lengths(requests, max_total=self.editor.cfg.max_length)
        t0 = time.perf_counter()
        asked = [{"prompt": r.prompt, "target": r.target} for r in requests]
        digest = request_digest(EDIT, requests=asked, author=author, note=note, force=force)

        def edit_event() -> Event:
            pre = self._scores(requests)
            # Scoped edits are computed on the base weights (the hooks act only inside _scores/generate).
            compress = {"rel_tol": self.settings.delta_rel_tol, "dtype": DTYPES[self.settings.delta_dtype]}
            if self.scope is None:  # what is logged is what applies: compressed before either use
                delta = self.editor.compute_delta(self.model, self.tokenizer, requests).compressed(**compress)
                guard = check_edit(self.model, delta, force, self.canaries, self.settings.guard_max_changed)
            else:
                forms = self._forms(requests)
                pieces = self.editor.compute_deltas(self.model, self.tokenizer, forms)
                delta = self.scope.scoped(self.model, self.tokenizer, [p.compressed(**compress) for p in pieces],
                                          forms, [r.prompt for r in requests], self._form_names())
                guard = check_scoped_edit(self.model, delta, force, self.canary_keys, self.canary_of,
                                          self.canary_prompts, self.scope.cfg.radius, self.settings.guard_max_captured)
            body = {"edit_id": uuid.uuid4().hex, "requests": asked, "author": author, "note": note, "force": force,
                    "time": now(), "pre": score_dicts(pre), "rank": delta.rank, "bytes": delta.nbytes,
                    "norm": delta.norm(), "guard": guard, "base_version": self.version}
            return Event(EDIT, self.model_fp, self.editor_fp, self.log_fp, body, delta.to_bytes())

        with self.edit_mutex:
            body, version, repeated = self._write(edit_event, idempotency_key, digest)
            with self.rw.read():
                post = self._scores(requests)
            self.maybe_checkpoint()
        pre = [TargetScore(s["logprob"], s["exact"]) for s in body["pre"]]
        return EditOutcome(body["edit_id"], version, pre, post, body["rank"], body["bytes"],
                           (time.perf_counter() - t0) * 1000, repeated)

    def _write(self, make_event: Callable[[], Event], key: str | None, digest: str) -> tuple[dict, int, bool]:
        """(body, version, repeated) of the event of this request: `make_event` computed on the newest state and
        appended if the log still ends there, or else computed again on the events that came in between.
        A key already in the log returns its event (repeated: True) and writes nothing. Under the edit mutex."""
        for _ in range(APPEND_TRIES):
            self.sync()
            if key is not None and key in self.idempotent:
                body, version = self.idempotent[key]
                if body.get("request_digest") != digest:
                    raise IdempotencyKeyReused()
                return body, version, True
            with self.rw.read():  # the state the event is computed on is the state after `base_id`
                base_id, base_version = self.last_id, self.version
                event = make_event()
            if key is not None:
                event.body.update(idempotency_key=key, request_digest=digest)
            try:
                self.log.append(event, after=base_id)
            except LogMoved:
                continue
            what = (f"edit {event.body['edit_id']}" if event.type == EDIT
                    else f"rollback of {', '.join(event.body['edit_ids'])}")
            self._catch_up_after_write(what)
            return event.body, base_version + 1, False  # appended right after base_id: the next version
        raise LogContention()

    def _form_names(self) -> tuple[str, ...]:
        return (PLAIN, CHAT) if self.tokenizer.chat_template else (PLAIN,)

    def _forms(self, requests: list[EditRequest]) -> list[EditRequest]:
        """Each scoped edit in every form a request can ask it in: the plain prompt, and the same question as the
        user's message in the chat template, the target being the assistant's reply. A delta computed on the plain
        prompt alone said the new answer in only 0.60 of chat replies (20 zsRE dev edits)."""
        out, chat_too = [], CHAT in self._form_names()
        for r in requests:
            out.append(r)
            if chat_too:
                chat = self.tokenizer.apply_chat_template([{"role": "user", "content": r.prompt}],
                                                          add_generation_prompt=True, tokenize=False)
                out.append(EditRequest(chat, r.target.strip()))
        return out

    def _catch_up_after_write(self, what: str) -> None:
        try:
            self.sync()
        except LogUnavailable as e:
            # The event is durable but Redis went away before we read it back: the follower applies it later.
            raise LogUnavailable(f"{what} was recorded in the edit log, but Redis became unreachable before it "
                                 f"was applied here; it applies when Redis is back") from e
        except NotReady as e:
            raise NotReady(f"{what} was recorded in the edit log, but this replica cannot apply the log: "
                           f"{self.error}") from e

    def rollback(self, edit_id: str | None, to_version: int | None, author: str, note: str,
                 idempotency_key: str | None = None) -> RollbackOutcome:
        self._pin_threads()
        self._check_usable()
        digest = request_digest(ROLLBACK, edit_id=edit_id, to_version=to_version, author=author, note=note)

        def rollback_event() -> Event:
            body = {"edit_ids": self._rollback_targets(edit_id, to_version), "to_version": to_version,
                    "author": author, "note": note, "time": now()}
            return Event(ROLLBACK, self.model_fp, self.editor_fp, self.log_fp, body)

        with self.edit_mutex:
            body, version, repeated = self._write(rollback_event, idempotency_key, digest)
            self.maybe_checkpoint()
        return RollbackOutcome(body["edit_ids"], version, repeated)

    def _rollback_targets(self, edit_id: str | None, to_version: int | None) -> list[str]:
        """Edit ids to revert, newest first (the reverse of how they were applied)."""
        if edit_id is not None:
            if edit_id not in self.edits:
                raise UnknownEdit()
            if edit_id not in self.active:
                raise AlreadyRolledBack()
            return [edit_id]
        if to_version > self.version:
            raise BadRequest(f"to_version {to_version} is after the current version {self.version}")
        ids = [i for i in reversed(self.active) if self.edits[i].version > to_version]
        if not ids:
            raise NothingToRollBack()
        return ids

    def prompt_ids(self, prompt: str | None, messages: list[dict] | None) -> list[int]:
        if messages is None:
            ids = self.tokenizer(prompt)["input_ids"]
        elif not self.tokenizer.chat_template:
            raise BadRequest("this model has no chat template: send 'prompt' instead of 'messages'")
        else:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template has its own
        if len(ids) > self.settings.max_prompt_tokens:
            raise BadRequest(f"prompt is longer than the limit of {self.settings.max_prompt_tokens} tokens")
        return ids

    def generate(self, prompt: str | None, messages: list[dict] | None, max_new_tokens: int | None,
                 temperature: float, top_p: float, seed: int | None, stop: list[str]) -> tuple[Completion, int, int]:
        """(completion, prompt tokens, version): the whole generation runs on one version of the weights."""
        self._pin_threads()
        max_new_tokens = max_new_tokens or min(DEFAULT_NEW_TOKENS, self.settings.max_new_tokens)
        if max_new_tokens > self.settings.max_new_tokens:
            raise BadRequest(f"max_new_tokens is over the limit of {self.settings.max_new_tokens}")
        ids = self.prompt_ids(prompt, messages)
        text, form = (prompt, PLAIN) if messages is None else (question(messages), CHAT)
        # The selection is made under the read lock, with the version it reports: an edit applied between the two
        # would otherwise give a reply of one version labelled with the next.
        with self.rw.read(), self._scoped_for(text, form) as selection:
            out = complete(self.model, self.tokenizer, ids, max_new_tokens, temperature, top_p, seed, stop,
                           observe=selection.observe if selection is not None else None)
            return out, len(ids), self.version

    def _scoped_for(self, text: str, form: str):
        """The scoped edit selected by this question, its piece for the request's form, for the forwards of its
        generation until its answer is said."""
        if self.scope is None or not self.scope.owner or not text.strip():
            return contextlib.nullcontext()
        return self.scope.applying(self.scope.request_keys(self.model, self.tokenizer, [text]), form)

    def score(self, requests: list[EditRequest]) -> tuple[list[TargetScore], int]:
        """Teacher-forced scores on one version of the weights (what /edit reports as pre/post). Not bound by the
        editor's window: a prompt up to the prompt limit, a target up to the generation limit, never truncated."""
        self._pin_threads()
        counts = self._check_lengths(requests, max_target=self.settings.max_new_tokens)
        with self.rw.read():
            return self._scores(requests, max(a + b for a, b in counts)), self.version

    def _scores(self, requests: list[EditRequest], max_length: int | None = None) -> list[TargetScore]:
        """Teacher-forced scores on the live model, scoped edits selected by each request's prompt; under a lock."""
        scoped = (self.scope.applying_to(self.model, self.tokenizer, [r.prompt for r in requests])
                  if self.scope is not None else contextlib.nullcontext())
        with scoped:
            return score_targets(self.model, self.tokenizer, requests, max_length or self.editor.cfg.max_length)

    # ---- state for the read endpoints ---------------------------------------------------------------------

    def weights_hash(self) -> str:
        """sha256 of the edited matrices (and, when scoped, of the stored edits' ids): equal on every replica that
        has applied the same log prefix."""
        with self.rw.read():
            if self._hash[0] != self.version:
                h, params = hashlib.sha256(), dict(self.model.named_parameters())
                for name in self.layer_names:
                    h.update(name.encode())
                    h.update(params[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
                if self.scope is not None:  # the weights never change: the state is the set of stored edits
                    h.update(" ".join(self.active).encode())
                self._hash = (self.version, h.hexdigest()[:16])
            return self._hash[1]

    def drift(self) -> dict[str, float]:
        """||W - W0||_F per edited matrix, W0 the base snapshot; cached per version (the weights are a function of it)."""
        self._pin_threads()
        with self.rw.read():
            if self._drift[0] != self.version:
                params = dict(self.model.named_parameters())
                self._drift = (self.version, {n: float((params[n].detach().float() - self.base[n].float()).norm())
                                              for n in self.layer_names})
            return self._drift[1]

    def canary_agreement(self) -> float | None:
        """Share of canaries the live model answers as the base did; one canary pass per new version, on demand."""
        self._pin_threads()
        if self.canaries is None and self.canary_keys is None:
            return None
        with self.rw.read():
            if self._agreement[0] != self.version and self.canary_keys is not None:
                # A canary outside every radius is answered by the base weights: the share outside is a lower
                # bound on agreement (a captured canary may still keep its answer).
                inside = {i for i, c in zip(self.canary_of, self.scope.select(self.canary_keys)) if c is not None}
                self._agreement = (self.version, 1 - len(inside) / len(self.canary_prompts))
            elif self._agreement[0] != self.version:
                self._agreement = (self.version, self.canaries.agreement())
            return self._agreement[1]

    def entry(self, edit_id: str) -> EditEntry:
        with self.rw.read():  # the table changes under the write lock
            if edit_id not in self.edits:
                raise UnknownEdit()
            return self.edits[edit_id]

    def list_edits(self, status: str | None, offset: int, limit: int) -> tuple[list[EditEntry], int]:
        with self.rw.read():
            rows = [e for e in self.edits.values() if status is None or e.status == status]
        return rows[offset: offset + limit], len(rows)

    def touch_device(self) -> None:
        """A real operation on the model's device: a dead GPU fails here, not at the next request."""
        torch.ones(1, device=self.model.device).add_(1).cpu()

    def readiness(self) -> tuple[bool, str]:
        if self.error:
            return False, self.error
        if self.embedded is not None and not self.embedded.alive():
            return False, "edit log (Redis) unreachable: the embedded server is restarting"
        if not self.log.ping():
            return False, "edit log (Redis) unreachable"
        return True, "ready"
