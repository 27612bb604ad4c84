"""The runtime: the replica (service/replica.py) and what requests do with it.

/edit and /rollback compute their event on the newest state, write it only if the log has not moved since
(compare-and-set; else catch up and compute again) and then catch up with the log. /score reads one whole version
under the read lock. Generations are decoded together by one thread (service/batcher.py), each on one whole
version: in place under the read lock, or, when the edit method never writes the weights (scoped), from the
published codebook without any lock, so a generation never waits behind an edit.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor_core import (
    CHAT,
    PLAIN,
    Completion,
    EditRequest,
    LowRankDelta,
    MENDEditor,
    PrefixCache,
    TargetScore,
    complete,
    first_block,
    join,
    load_base_model,
    model_fingerprint,
    prompt_ids,
    score_targets,
)

from .batcher import Batcher, Generation
from .editlog import EDIT, ROLLBACK, Event, LogMoved
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
from .guard import Verdict
from .methods import Served
from .replica import EditEntry, Replica
from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_NEW_TOKENS = 64
# Compare-and-set attempts of one /edit or /rollback. Each lost one means another replica wrote an event meanwhile;
# after this many the request gives up (LogContention) rather than wait behind a busy log without bound.
APPEND_TRIES = 5


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
class Imported:
    """One item of a bulk import: imported (in the log, applied here), repeated (its key was in the log already:
    that edit), refused (by the guard) or invalid (too long); nothing is written for the last two."""

    status: str
    edit_id: str | None = None
    version: int | None = None
    error: str | None = None


# Events per append of a bulk import: one script call of ~1 MB, which holds Redis for a few ms.
IMPORT_CHUNK = 200
COMPUTED_AT_SELECTION = "at first selection"  # an imported edit's body says when its delta is computed


def import_key(r: EditRequest) -> str:
    """An imported item's own idempotency key when it brings none: the same correction imported again is a repeat."""
    return "import:" + hashlib.sha256(json.dumps([r.prompt, r.target]).encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Preview:
    """What an edit would do, computed on `version` and written nowhere."""

    version: int
    pre: list[TargetScore]  # the edit requests, then the probes
    post: list[TargetScore]
    replies: list[tuple[str, str]]  # (before, after) greedy reply to each edit prompt
    verdict: Verdict
    rank: int
    nbytes: int
    elapsed_ms: float


@dataclass(frozen=True)
class RollbackOutcome:
    rolled_back: list[str]
    version: int
    repeated: bool = False


@dataclass(frozen=True)
class ActiveEdits:
    """The edits active at one version, in log order: what an export writes."""

    version: int
    entries: list[EditEntry]
    deltas: dict[str, LowRankDelta]  # edit id -> delta


def question(messages: list[dict]) -> str:
    """What a chat request is keyed by: its last user message as a plain prompt. The template around it (system
    prompt, role markers) is the same for every request and would make every chat key alike; without it a
    question asked in chat selects the edit made with the same question as a plain prompt, and back."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def load_editor(path: Path, model: PreTrainedModel, model_fp: str) -> MENDEditor:
    if not (path / "editor.json").is_file():
        raise FileNotFoundError(f"no trained editor at {path} (editor.json missing): train one with "
                                f"`mend train` or point MEND_EDITOR at an editor folder")
    editor = MENDEditor.load(path, model)
    # Its networks sit with the first edited layer: under a device map the model's own first device (the embedding's)
    # is often the fullest, and the deltas move to each edited weight's device when they are applied.
    editor.to(model.get_parameter(editor.layers[0].name).device)
    if editor.cfg.model_fingerprint and editor.cfg.model_fingerprint != model_fp:
        raise FingerprintMismatch(f"editor {path} was trained for model {editor.cfg.model_fingerprint}, "
                                  f"but the loaded model is {model_fp}: refusing to start")
    return editor


def load_served(settings: Settings) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str, MENDEditor]:
    """The base model and tokenizer, the fingerprint of its base weights (before any replay) and the editor checked
    against it: what a server, and any command that reads its log, starts from."""
    model, tokenizer = load_base_model(settings.model, settings.dtype, settings.device, settings.device_map,
                                       settings.max_memory)
    model_fp = model_fingerprint(model)
    return model, tokenizer, model_fp, load_editor(settings.editor, model, model_fp)


class Runtime(Replica):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.batcher = Batcher(self.model, self.tokenizer, self.method, self.rw, lambda: self.published,
                               self._pin_threads, self.settings.max_batch)
        self._hash: tuple[int, str] = (-1, "")
        self._drift: tuple[int, dict[str, float]] = (-1, {})
        self._agreement: tuple[int, float | None] = (-1, None)

    @classmethod
    def start(cls, settings: Settings, follow: bool = True) -> Runtime:
        """Load everything, replay the log, start following it (unless not `follow`: a command that reads one
        version). Any failure stops what was started and raises."""
        embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir / "redis").start()
        try:
            if settings.threads:
                torch.set_num_threads(settings.threads)
            model, tokenizer, model_fp, editor = load_served(settings)
            rt = cls(settings, model, tokenizer, editor, model_fp, settings.redis_url or embedded.url)
            rt.embedded = embedded
            rt.replay()
        except BaseException:
            if embedded:
                embedded.stop()
            raise
        # What the replay built lives as long as the server: frozen out of the collector's reach, a full collection
        # no longer walks every stored edit's objects (a pause that grew with the edits kept).
        gc.collect()
        gc.freeze()
        if follow:
            rt.start_following()
        rt.batcher.start()
        return rt

    def close(self) -> None:
        self.batcher.close()  # its requests fail with NotReady; then the follower and the log stop
        super().close()

    # ---- commands: /edit and /rollback ---------------------------------------------------------------------

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

        # The blocks below the first edited one never change: the scores before and after run only the edited
        # blocks on the input the edit's own forwards left for its prompt and target.
        prefix = PrefixCache(self.model, first_block(self.editor.layers))

        def edit_event() -> Event:
            delta, verdict = self.method.compute(requests, prefix)
            pre = self._scores(requests, prefix=prefix)  # nothing is applied yet
            guard = verdict.enforce(force)
            body = {"edit_id": uuid.uuid4().hex, "requests": asked, "author": author, "note": note, "force": force,
                    "time": now(), "pre": score_dicts(pre), "rank": delta.rank, "bytes": delta.nbytes,
                    "norm": delta.norm(), "guard": guard, "base_version": self.version}
            logged = self.method.logged(delta)
            self.method.remember(body["edit_id"], delta)
            return Event(EDIT, self.model_fp, self.editor_fp, self.log_fp, body, logged.to_bytes())

        with self.edit_mutex:
            body, version, repeated = self._write(edit_event, idempotency_key, digest)
            with self.rw.read():
                post = self._scores(requests, prefix=prefix)
            self.maybe_checkpoint()
        pre = [TargetScore(s["logprob"], s["exact"]) for s in body["pre"]]
        return EditOutcome(body["edit_id"], version, pre, post, body["rank"], body["bytes"],
                           (time.perf_counter() - t0) * 1000, repeated)

    def import_edits(self, requests: list[EditRequest], keys: list[str | None], author: str, note: str,
                     force: bool) -> list[Imported]:
        """Many edits at once, each logged as a definition whose delta is computed at its first selection: keyed
        in batches, checked by the guard, appended IMPORT_CHUNK at a time, and acknowledged only once in the log.
        Each item is idempotent by its key (given, or `import_key`): importing a file again after a crash writes
        only what had not landed."""
        self._pin_threads()
        self._check_usable()
        out: list[Imported | None] = [None] * len(requests)
        for i, r in enumerate(requests):
            try:
                self._check_lengths([r], max_total=self.editor.cfg.max_length)
            except BadRequest as e:
                out[i] = Imported("invalid", error=e.detail)
        keys = [k or import_key(r) for k, r in zip(keys, requests)]
        digests = [request_digest(EDIT, requests=[{"prompt": r.prompt, "target": r.target}]) for r in requests]
        first: dict[str, int] = {}  # an item whose key came earlier in this import is that item's repeat
        again = {i: first.setdefault(keys[i], i) for i in range(len(requests)) if out[i] is None}
        again = {i: f for i, f in again.items() if f != i}
        todo = [i for i in range(len(requests)) if out[i] is None and i not in again]
        # Keys and radii do not depend on the log's state: computed once, outside the mutex.
        defined = dict(zip(todo, self.method.define([requests[i] for i in todo])))
        with self.edit_mutex, self.log.turn(self.settings.turn_wait_s):
            moved = 0
            while True:
                self.sync()
                left = [i for i in todo if out[i] is None and self._not_in_log(i, keys, digests, out)]
                if not left:
                    break
                chunk = left[:IMPORT_CHUNK]
                base_id, base_version = self.last_id, self.version
                events, placed = [], []
                for i in chunk:
                    delta, verdict = defined[i]
                    if verdict.reason is not None and not force:
                        out[i] = Imported("refused", error=verdict.reason)
                        continue
                    body = {"edit_id": uuid.uuid4().hex, "requests": [{"prompt": requests[i].prompt,
                                                                        "target": requests[i].target}],
                            "author": author, "note": note, "force": force, "time": now(), "pre": [], "rank": 0,
                            "bytes": 0, "norm": 0.0, "guard": verdict.enforce(True),
                            "base_version": base_version + len(events), "computed": COMPUTED_AT_SELECTION,
                            "idempotency_key": keys[i], "request_digest": digests[i]}
                    events.append(Event(EDIT, self.model_fp, self.editor_fp, self.log_fp, body, delta.to_bytes()))
                    placed.append(i)
                if not events:
                    continue
                try:
                    self.log.append_many(events, after=base_id)
                except LogMoved:  # another replica wrote meanwhile: what it wrote may be some of these items
                    moved += 1
                    if moved == APPEND_TRIES:
                        raise LogContention() from None  # the items imported so far stay; a retry repeats them
                    continue
                moved = 0
                for j, (i, event) in enumerate(zip(placed, events)):
                    out[i] = Imported("imported", event.body["edit_id"], base_version + j + 1)
                self._catch_up_after_write(f"an import of {len(events)} edits")
            self.maybe_checkpoint()  # a snapshot every MEND_SNAPSHOT_EVERY events, as /edit writes one
        for i, f in again.items():
            if digests[i] != digests[f]:
                out[i] = Imported("invalid", error=f"key {keys[i]!r} was used for another edit")
            elif out[f].status in ("imported", "repeated"):
                out[i] = Imported("repeated", out[f].edit_id, out[f].version)
            else:
                out[i] = out[f]
        return out

    def _not_in_log(self, i: int, keys: list[str], digests: list[str], out: list) -> bool:
        """Whether item i is still to write: False, with its outcome set, when its key is in the log already."""
        if keys[i] not in self.idempotent:
            return True
        raw, version = self.idempotent[keys[i]]
        body = json.loads(raw)
        out[i] = (Imported("repeated", body["edit_id"], version) if body.get("request_digest") == digests[i]
                  else Imported("invalid", error=f"key {keys[i]!r} was used for another edit"))
        return False

    def preview(self, requests: list[EditRequest], probes: list[EditRequest], reply_tokens: int) -> Preview:
        """What `edit` would report for these requests (and these probes), the guard's verdict, and the greedy reply
        to each edit prompt before and after, with the delta computed as `edit` computes it; nothing is written or
        applied, and the guard's refusal is reported rather than raised."""
        self._pin_threads()
        self._check_usable()
        self._check_lengths(requests + probes, max_total=self.editor.cfg.max_length)
        reply_tokens = min(reply_tokens, self.settings.max_new_tokens)
        asked = [self.checked(r.prompt, None, reply_tokens, 0.0, 1.0, None, []) for r in requests]
        t0 = time.perf_counter()
        with contextlib.ExitStack() as lock:
            lock.enter_context(self.rw.read())  # as an edit's compute: one version, which no apply changes meanwhile
            state = self.published
            delta, verdict = self.method.compute(requests)
            candidate = self.method.candidate(delta, state.view)
            # The probes in a batch of their own: padded together with them, the edit's rows could differ from
            # what /edit reports by rounding.
            batches = [b for b in (requests, probes) if b]
            pre = [s for b in batches for s in self._scores(b)]
            post = [s for b in batches for s in self._scores(b, on=candidate)]
            if self.method.weights_fixed:
                lock.close()  # the replies read the view taken above, never the weights: like /generate, no lock
            live = Served(self.model, state.view)
            replies = [(self._reply(live, g), self._reply(candidate, g)) for g in asked]
        return Preview(state.version, pre, post, replies, verdict, delta.rank, delta.nbytes,
                       (time.perf_counter() - t0) * 1000)

    def _reply(self, on: Served, g: Generation) -> str:
        # Decoded here, alone: a candidate's weights (in place) are not the batch's. With the piece /generate would
        # make for the prompt's wording, so that "before" is what /generate says now.
        worded = self.method.worded(g.text, g.form, on.view)
        return complete(on.model, self.tokenizer, g.ids, g.max_new_tokens,
                        ask=self.method.ask(g.text, g.form, on.view, worded), scope=self.method.scope).text

    def _write(self, make_event: Callable[[], Event], key: str | None, digest: str) -> tuple[dict, int, bool]:
        """(body, version, repeated) of the event of this request: `make_event` computed on the newest state and
        appended if the log still ends there, or else computed again on the events that came in between.
        A key already in the log returns its event (repeated: True) and writes nothing. Under the edit mutex."""
        with self.log.turn(self.settings.turn_wait_s):
            return self._write_in_turn(make_event, key, digest)

    def _write_in_turn(self, make_event: Callable[[], Event], key: str | None, digest: str) -> tuple[dict, int, bool]:
        for _ in range(APPEND_TRIES):
            self.sync()
            if key is not None and key in self.idempotent:
                raw, version = self.idempotent[key]
                body = json.loads(raw)
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
        if messages is not None and not self.tokenizer.chat_template:
            raise BadRequest("this model has no chat template: send 'prompt' instead of 'messages'")
        ids = prompt_ids(self.tokenizer, prompt, messages)
        if len(ids) > self.settings.max_prompt_tokens:
            raise BadRequest(f"prompt is longer than the limit of {self.settings.max_prompt_tokens} tokens")
        return ids

    def checked(self, prompt: str | None, messages: list[dict] | None, max_new_tokens: int | None,
                temperature: float, top_p: float, seed: int | None, stop: list[str]) -> Generation:
        """A generation request checked against the model's limits (raises BadRequest), its prompt tokenized."""
        max_new_tokens = max_new_tokens or min(DEFAULT_NEW_TOKENS, self.settings.max_new_tokens)
        if max_new_tokens > self.settings.max_new_tokens:
            raise BadRequest(f"max_new_tokens is over the limit of {self.settings.max_new_tokens}")
        ids = self.prompt_ids(prompt, messages)
        text, form = (prompt, PLAIN) if messages is None else (question(messages), CHAT)
        return Generation(ids, text, form, max_new_tokens, temperature, top_p, seed, stop)

    def generate(self, prompt: str | None, messages: list[dict] | None, max_new_tokens: int | None,
                 temperature: float, top_p: float, seed: int | None, stop: list[str]) -> tuple[Completion, int, int]:
        """(completion, prompt tokens, version): decoded with the other generations of the moment, on one version."""
        g = self.checked(prompt, messages, max_new_tokens, temperature, top_p, seed, stop)
        self._word(g)
        for _ in self.batcher.submit(g).pieces():
            pass
        return g.completion, len(g.ids), g.version

    def _word(self, g: Generation) -> None:
        # In the requesting thread, so that the decode loop, which every running generation waits on, never
        # computes an edit. On the view of now: the row applies it only if it selects the same edit at its start.
        self._pin_threads()
        g.worded = self.method.worded(g.text, g.form, self.published.view)

    @contextlib.contextmanager
    def streaming(self, g: Generation) -> Iterator[Iterator[str]]:
        """`generate` as it is made: the reply's text in pieces, on one version, `g.version` (set on entering),
        from the first piece to the last; `g.completion` is set after the last. Leaving early stops its decoding."""
        self._word(g)
        ticket = self.batcher.submit(g)
        try:
            ticket.joined()
            yield ticket.pieces()
        finally:
            ticket.cancel()

    def score(self, requests: list[EditRequest]) -> tuple[list[TargetScore], int]:
        """Teacher-forced scores on one version of the weights (what /edit reports as pre/post). Not bound by the
        editor's window: a prompt up to the prompt limit, a target up to the generation limit, never truncated."""
        self._pin_threads()
        counts = self._check_lengths(requests, max_target=self.settings.max_new_tokens)
        # Before the lock, as /generate does: a piece for a new wording costs an edit's compute, which no apply
        # should wait behind. Made on the view of now, it applies only where the prompt selects the same row.
        view = self.published.view
        worded = [self.method.worded(r.prompt, PLAIN, view) for r in requests]
        with self.rw.read():
            return self._scores(requests, max(a + b for a, b in counts), worded=worded), self.version

    def _scores(self, requests: list[EditRequest], max_length: int | None = None,
                on: Served | None = None, prefix: PrefixCache | None = None,
                worded: list | None = None) -> list[TargetScore]:
        """Teacher-forced scores on `on` (default: the live state), scoped edits selected by each request's prompt;
        under a lock."""
        on = on or Served(self.model, self.published.view)
        with self.method.scoring([r.prompt for r in requests], on.view, worded):
            return score_targets(on.model, self.tokenizer, requests, max_length or self.editor.cfg.max_length,
                                 prefix=prefix)

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
                h.update(self.method.state_digest(self.active))
                self._hash = (self.version, h.hexdigest()[:16])
            return self._hash[1]

    def drift(self) -> dict[str, float]:
        """||W - W0||_F per edited matrix (`EditMethod.drift`); cached per version (the weights are a function of
        it)."""
        self._pin_threads()
        with self.rw.read():
            if self._drift[0] != self.version:
                self._drift = (self.version, self.method.drift())
            return self._drift[1]

    def canary_agreement(self) -> float | None:
        """Share of canaries the live model answers as the base did; one canary pass per new version, on demand."""
        self._pin_threads()
        with self.rw.read():
            if self._agreement[0] != self.version:
                self._agreement = (self.version, self.method.agreement())
            return self._agreement[1]

    def active_edits(self) -> ActiveEdits:
        """The active edits of one whole version: the table, the deltas and the version change together, under the
        write lock."""
        with self.rw.read():
            return ActiveEdits(self.version, [self.edits[i] for i in self.active], dict(self.active))

    def entry(self, edit_id: str) -> EditEntry:
        with self.rw.read():  # the table changes under the write lock
            if edit_id not in self.edits:
                raise UnknownEdit()
            return self.edits[edit_id]

    def list_edits(self, status: str | None, author: str | None, newest_first: bool, offset: int,
                   limit: int) -> tuple[list[EditEntry], int]:
        with self.rw.read():
            rows = [e for e in self.edits.values()
                    if (status is None or e.status == status) and (author is None or e.author == author)]
        if newest_first:
            rows.reverse()
        return rows[offset: offset + limit], len(rows)

    def touch_device(self) -> None:
        """A real operation on the model's device: a dead GPU fails here, not at the next request."""
        torch.ones(1, device=self.model.device).add_(1).cpu()
