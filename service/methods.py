"""The two editing methods behind one interface: how an edit is computed, checked, applied, reverted and selected.

InPlace adds each delta to the weights (MEND as published). Scoped stores it in the scope's codebook and adds it
only to the forwards of requests that select it (editor_core.scope); the weights never change. The replica
(service/replica.py) calls `apply` and `revert` under its write lock; everything else reads.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor_core import (
    DIGEST,
    DTYPES,
    PLAIN,
    THREADS,
    Ask,
    CanarySet,
    Codebook,
    EditRequest,
    IndexConfig,
    LowRankDelta,
    MENDEditor,
    PrefixCache,
    Scope,
    ScopedMeta,
    WeightsView,
    Worded,
    codebook_from_state,
    codebook_state,
    factors_digest,
    first_block,
    load_canaries,
    merged,
    restore,
    shadow_of,
    snapshot,
    to_peft,
)

from .errors import ImportInPlace, MergedScopedExport, NothingToExport
from .guard import Verdict, check_edit, check_scoped_edit
from .settings import Settings

log = logging.getLogger(__name__)

# What a request reads besides the weights (`EditMethod.view`): the scoped codebook, or nothing in place.
View = Codebook | None

KEYS_FILE = "keys.safetensors"  # of a scoped export: row i is the key of the manifest's adapters[i]
# The scope settings that shape a new edit's factors (not which prompts select it): a definition records them.
COMPUTED_WITH = ("scale", "max_scale", "tune_steps", "tune_lr", "end_words")


@dataclass(frozen=True)
class Served:
    """What a request runs on: the model, and the view it selects edits from."""

    model: PreTrainedModel
    view: View


class EditMethod:
    """What differs between the methods. `view()` is what a request reads besides the weights: taken once per
    request, it must stay valid however many events are applied meanwhile."""

    name: str
    # True when applying an event never writes the weights: generation then needs no lock (it reads `view()`).
    weights_fixed: bool
    checkpoints: bool  # whether the edited weights are worth storing (a restart restores them)
    scope: Scope | None = None  # what adds each generation's own edit to a batch's forwards (scoped), if anything

    def __init__(self, settings: Settings, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 editor: MENDEditor) -> None:
        self.settings, self.model, self.tokenizer, self.editor = settings, model, tokenizer, editor
        self.layer_names = [l.name for l in editor.layers]
        self.compress = {"rel_tol": settings.delta_rel_tol, "dtype": DTYPES[settings.delta_dtype]}

    def fingerprint(self, editor_fp: str) -> str:
        """The fingerprint a log of this method is written for."""
        return editor_fp

    def compute(self, requests: list[EditRequest],
                prefix: PrefixCache | None = None) -> tuple[LowRankDelta, Verdict]:
        """The delta to log for these requests and the guard's verdict on it; under a lock. Raises EditRejected
        only for a delta that can never be applied (non-finite), forced or not. `prefix`: where the forwards leave
        the first edited block's input of the sequences they read, for the scores of the same edit."""
        raise NotImplementedError

    def candidate(self, delta: LowRankDelta, view: View) -> Served:
        """The served state were `delta` applied on top of `view`, built aside: the live weights and view stay as
        they are, and requests reading them see nothing of it. Under the read lock (it may read the weights)."""
        raise NotImplementedError

    def logged(self, delta: LowRankDelta) -> LowRankDelta:
        """What the log keeps of a computed delta (in the thread that computed it): all of it, unless the method can
        make it again from less."""
        return delta

    def define(self, requests: list[EditRequest]) -> list[tuple[LowRankDelta, Verdict]]:
        """Each request as an edit to log now whose delta is computed later (a bulk import), and the guard's
        verdict on it. In place cannot: its deltas go into the weights, so they are computed now."""
        raise ImportInPlace()

    def remember(self, edit_id: str, delta: LowRankDelta) -> None:
        """The delta about to be logged as `edit_id`, whole: kept, so that applying its logged form needs no
        recomputation."""

    def apply(self, edit_id: str, delta: LowRankDelta, write_weights: bool) -> None:
        """Whole or not at all."""
        raise NotImplementedError

    def held(self, edit_id: str, delta: LowRankDelta) -> LowRankDelta:
        """What the replica keeps of an applied edit's logged delta (its active edits)."""
        return delta

    def revert(self, edit_ids: list[str], active: dict[str, LowRankDelta], write_weights: bool) -> None:
        """Undo these active edits (newest first), all or none."""
        raise NotImplementedError

    def view(self) -> View:
        return None

    def export(self, active: dict[str, LowRankDelta], fmt: str, out: Path, metadata: dict[str, str]) -> dict:
        """Write these active edits (edit id -> delta, in log order) into the new folder `out` as `fmt` ("peft" or
        "merged"), `metadata` in each adapter's safetensors header; returns what the manifest says of the files.
        Reads neither the lock nor the view: the deltas are one version's, and what else it reads never changes."""
        raise NotImplementedError

    def worded(self, text: str, form: str, view: View) -> Worded | None:
        """What a generation of this question needs computed before it runs, in the requesting thread: the piece of
        the edit it selects in `view` made for its own wording (`Scope.worded`), if the method has such."""
        return None

    def ask(self, text: str, form: str, view: View, worded: Worded | None = None) -> Ask | None:
        """What a generation of this question (`text`, asked in `form`) selects its own edit by, in `view`, with
        what `worded` computed for it; None when a method has no per-request edits."""
        return None

    def scoring(self, prompts: list[str], view: View,
                worded: list[Worded | None] | None = None) -> contextlib.AbstractContextManager:
        """The forwards of teacher-forced scoring of these prompts within this context (with what `worded`
        computed for each, when the caller computed it beforehand, outside a lock)."""
        return contextlib.nullcontext()

    def agreement(self) -> float | None:
        """Share of canaries answered as the base model did; under a read lock."""
        return None

    def snapshot_checks(self) -> str | None:
        """What a snapshot of this method's state must have been written under to be read back (None: the method
        takes no snapshots; in place restores weight checkpoints instead)."""
        return None

    def snapshot_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        raise NotImplementedError

    def restore_state(self, tensors: dict[str, torch.Tensor], info: dict) -> dict[str, LowRankDelta]:
        """Take the state a snapshot holds; returns the active edits (edit id -> logged delta), in log order."""
        raise NotImplementedError

    def piece_stats(self) -> dict[str, float]:
        """What the store of edits' factors holds and has done (`service.metrics.PIECE_METRICS`), if it has one."""
        return {}

    def drift(self) -> dict[str, float]:
        """||W - W0||_F per edited matrix, W0 the base weights; under a read lock."""
        return dict.fromkeys(self.layer_names, 0.0)

    def state_digest(self, active: dict[str, LowRankDelta]) -> bytes:
        """What besides the edited matrices makes up the served state, for the weights hash."""
        return b""

    def _canaries(self):
        n = self.settings.guard_canaries
        if n == 0:
            log.warning("MEND_GUARD_CANARIES=0: edits are not checked against canaries")
            return None
        return load_canaries(self.settings.canaries, n)


class InPlace(EditMethod):
    name, weights_fixed, checkpoints = "inplace", False, True

    def __init__(self, *args) -> None:
        super().__init__(*args)
        # The weights with no active edit, bit for bit (a scoped server never writes them, so keeps no copy).
        self.base = snapshot(self.model, self.layer_names)
        t0, canaries = time.perf_counter(), self._canaries()
        # Built on the base weights: the log is replayed after this.
        self.canaries = canaries and CanarySet(self.model, self.tokenizer, canaries,
                                               first_block(self.editor.layers))
        if canaries:
            log.info("edit guard: %d canaries answered by the base model in %.2f s", len(canaries),
                     time.perf_counter() - t0)

    def drift(self) -> dict[str, float]:
        params = dict(self.model.named_parameters())
        return {n: float((params[n].detach().float() - self.base[n].float()).norm()) for n in self.layer_names}

    def compute(self, requests: list[EditRequest],
                prefix: PrefixCache | None = None) -> tuple[LowRankDelta, Verdict]:
        # What is logged is what applies: compressed before either use.
        delta = self.editor.compute_delta(self.model, self.tokenizer, requests).compressed(**self.compress)
        return delta, check_edit(self.model, delta, self.canaries, self.settings.guard_max_changed)

    def candidate(self, delta: LowRankDelta, view: View) -> Served:
        # A module tree of its own, over the live tensors but the edited matrices: functional_call on the served
        # model would swap its tensors for every thread, and a concurrent /generate would see them. `updated` is
        # apply's arithmetic, so the candidate's weights are bit for bit those the edit would write.
        model = shadow_of(self.model)
        for name, weight in delta.updated(self.model).items():
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, nn.Parameter(weight, requires_grad=False))
        return Served(model, view)

    def apply(self, edit_id: str, delta: LowRankDelta, write_weights: bool) -> None:
        if write_weights:
            delta.apply(self.model)  # computes every new matrix before writing any

    def revert(self, edit_ids: list[str], active: dict[str, LowRankDelta], write_weights: bool) -> None:
        if not write_weights:
            return
        # No active edit left: the base, since apply-then-revert is not exact in floating point.
        left = [i for i in active if i not in edit_ids]
        restore(self.model, self._reverted([active[i] for i in edit_ids]) if left else self.base)

    def _reverted(self, deltas: list[LowRankDelta]) -> dict[str, torch.Tensor]:
        """The edited matrices with each delta subtracted in turn, computed aside: raises (NonFiniteDeltaError or
        any other error) before a single weight is written. Each step is LowRankDelta.updated, the arithmetic of
        `revert`, so the result is bit for bit that of reverting one by one."""
        params = dict(self.model.named_parameters())
        weights = {n: params[n] for n in self.layer_names}
        for delta in deltas:
            weights.update(delta.updated(WeightsView(weights), sign=-1.0))
        return weights

    def agreement(self) -> float | None:
        return None if self.canaries is None else self.canaries.agreement()

    def export(self, active: dict[str, LowRankDelta], fmt: str, out: Path, metadata: dict[str, str]) -> dict:
        # The served weights are base + the active deltas: one adapter of their sum, or the sum merged into the base.
        if fmt == "merged":
            merged(list(active.values()), self.model, out, base=self.base, tokenizer=self.tokenizer)
            return {"checkpoint": "."}
        if not active:
            raise NothingToExport()
        to_peft(list(active.values()), self.model, out, metadata)
        return {"adapter": "."}


class Scoped(EditMethod):
    name, weights_fixed, checkpoints = "scoped", True, False

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.scope = load_scope(self.settings.editor, self.editor)
        self.scope.attach(self.model)
        self.scope.store.max_bytes = self.settings.piece_cache_mb * 2**20
        self.scope.store.recompute = self._recompute
        self.scope.index_cfg = IndexConfig(min_rows=self.settings.index_min_rows,
                                           ef_search=self.settings.index_ef_search)
        self.scope.codebook = self.scope.empty()
        t0, canaries = time.perf_counter(), self._canaries()
        # A scoped guard needs only the canaries' keys: an edit changes nothing outside its radius.
        self.canary_prompts = canaries and [c.prompt for c in canaries]
        self.canary_keys, self.canary_of = (self.scope.candidate_keys(self.model, self.tokenizer, self.canary_prompts)
                                            if canaries else (None, []))
        if canaries:
            log.info("edit guard: %d canaries keyed in %.2f s", len(canaries), time.perf_counter() - t0)

    def fingerprint(self, editor_fp: str) -> str:
        return scoped_fingerprint(editor_fp, self.scope)

    def compute(self, requests: list[EditRequest],
                prefix: PrefixCache | None = None) -> tuple[LowRankDelta, Verdict]:
        # Computed on the base weights: the scope's hooks act only in a thread that opened one of its contexts.
        delta = self.scope.compute(self.model, self.tokenizer, self.editor, requests, prefix=prefix, **self.compress)
        verdict = check_scoped_edit(self.model, delta, self.canary_keys, self.canary_of, self.canary_prompts,
                                    self.scope.cfg.radius, self.settings.guard_max_captured,
                                    self.scope.codebook.cleared())
        return delta, verdict

    def candidate(self, delta: LowRankDelta, view: Codebook) -> Served:
        # Added last, where the logged edit would be (ties between keys go to the newest); the id is never shown.
        return Served(self.model, view.beside("candidate", delta))

    def logged(self, delta: LowRankDelta) -> LowRankDelta:
        # Its definition: what it was computed from and how, its key and a digest of its factors; the factors
        # (~430 KB on SmolLM2) are derived state, held in the scope's store or recomputed (`_recompute`).
        meta = {**delta.meta, DIGEST: factors_digest(delta), **self._how()}
        return LowRankDelta({}, meta, delta.key)

    def define(self, requests: list[EditRequest]) -> list[tuple[LowRankDelta, Verdict]]:
        # Computed at the first selection as /edit computes now: the settings and thread count are recorded here.
        empty, how = self.scope.codebook.cleared(), self._how()
        out = []
        for d in self.scope.defined(self.model, self.tokenizer, requests):
            d = LowRankDelta({}, {**d.meta, **how}, d.key)
            out.append((d, check_scoped_edit(self.model, d, self.canary_keys, self.canary_of, self.canary_prompts,
                                             self.scope.cfg.radius, self.settings.guard_max_captured, empty)))
        return out

    def _how(self) -> dict[str, str]:
        how = {"rel_tol": self.settings.delta_rel_tol, "dtype": self.settings.delta_dtype,
               **{k: getattr(self.scope.cfg, k) for k in COMPUTED_WITH}}
        return {THREADS: str(torch.get_num_threads()), "computed_with": json.dumps(how, sort_keys=True)}

    def remember(self, edit_id: str, delta: LowRankDelta) -> None:
        self.scope.store.put(edit_id, delta)

    def snapshot_checks(self) -> str:
        # Keys, relation keys and rare words are read back, not recomputed: the scope and its checks must match.
        h = hashlib.sha256(self.scope.fingerprint().encode())
        book = self.scope.codebook
        if book.relation is not None:
            h.update(book.relation.map.contiguous().numpy().tobytes() + str(book.relation.radius).encode())
        if book.words is not None:
            h.update(json.dumps([sorted(book.words.common), book.words.radius]).encode())
        cfg = self.scope.index_cfg  # the index's graph is read back too; its search settings may change
        h.update(repr(cfg and (cfg.m, cfg.ef_construction)).encode())
        return h.hexdigest()[:32]

    def snapshot_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return codebook_state(self.scope.codebook)

    def restore_state(self, tensors: dict[str, torch.Tensor], info: dict) -> dict[str, LowRankDelta]:
        self.scope.codebook = codebook_from_state(tensors, info, self.scope.empty())
        return dict(self.scope.codebook.stored)

    def piece_stats(self) -> dict[str, float]:
        store = self.scope.store
        return {"bytes": store.nbytes, "held": len(store), **dataclasses.asdict(store.stats)}

    def _recompute(self, definition: LowRankDelta) -> LowRankDelta:
        """The factors of a logged definition, computed as they were at edit time: the same requests, the scope
        settings and compression they were computed with, at the same thread count (the float arithmetic, and so
        the bits, depend on it). Set aside from any forward this thread is in (a prefill selecting the edit)."""
        meta = ScopedMeta.read(definition.meta)
        requests = [EditRequest(p, t) for p, t in zip(meta.prompts or (), meta.targets or ())]
        how = json.loads(definition.meta["computed_with"])
        scope = self.scope
        cfg = {k: how[k] for k in COMPUTED_WITH}
        if cfg != {k: getattr(scope.cfg, k) for k in COMPUTED_WITH}:
            scope = copy.copy(scope)  # shares the hooks and thread state; only the settings differ
            scope.cfg = dataclasses.replace(scope.cfg, **cfg)
        threads = torch.get_num_threads()
        with scope.aside():
            torch.set_num_threads(int(definition.meta[THREADS]))
            try:
                return scope.compute(self.model, self.tokenizer, self.editor, requests, rel_tol=how["rel_tol"],
                                     dtype=DTYPES[how["dtype"]])
            finally:
                torch.set_num_threads(threads)

    def apply(self, edit_id: str, delta: LowRankDelta, write_weights: bool) -> None:
        self.scope.add(edit_id, delta)  # a new codebook, swapped in whole

    def held(self, edit_id: str, delta: LowRankDelta) -> LowRankDelta:
        return self.scope.codebook.held(edit_id)  # one object for the replica and the codebook; its key is a row

    def revert(self, edit_ids: list[str], active: dict[str, LowRankDelta], write_weights: bool) -> None:
        self.scope.remove(*edit_ids)  # all of them or none
        for edit_id in edit_ids:  # a request still on an older codebook that selects one recomputes it
            self.scope.store.forget(edit_id)

    def view(self) -> Codebook:
        return self.scope.codebook

    def worded(self, text: str, form: str, view: Codebook) -> Worded | None:
        chosen = self.scope.selected(self.model, self.tokenizer, text, view)
        if chosen is None:
            return None
        # Its pieces held now, in the requesting thread: the decode loop every generation waits on then finds them.
        view.row_pieces(chosen[1])
        if not self.settings.reword:
            return None
        try:
            return self.scope.worded_for(self.model, self.tokenizer, self.editor, text, form, view, *chosen,
                                         **self.compress)
        except Exception:  # the request still gets the edit's stored piece: worse words, but an answer
            log.exception("computing the piece of a selected edit for a new wording failed")
            return None

    def ask(self, text: str, form: str, view: Codebook, worded: Worded | None = None) -> Ask:
        return Ask(text, form, view, worded)

    def scoring(self, prompts: list[str], view: Codebook,
                worded: list[Worded | None] | None = None) -> contextlib.AbstractContextManager:
        # What /generate would apply: the piece made for each prompt's own wording where it has one (and it
        # applies only where it fits the row the prompt selects in `view`).
        worded = [self.worded(p, PLAIN, view) for p in prompts] if worded is None else worded
        return self.scope.applying_to(self.model, self.tokenizer, prompts, book=view, worded=worded)

    def agreement(self) -> float | None:
        if self.canary_keys is None:
            return None
        # A canary outside every radius is answered by the base weights: the share outside is a lower bound on
        # agreement (a captured canary may still keep its answer).
        texts = [self.canary_prompts[i] for i in self.canary_of]
        inside = {i for i, c in zip(self.canary_of, self.scope.select(self.canary_keys, texts=texts)) if c is not None}
        return 1 - len(inside) / len(self.canary_prompts)

    def state_digest(self, active: dict[str, LowRankDelta]) -> bytes:
        return " ".join(active).encode()  # the weights never change: the state is the set of stored edits

    def export(self, active: dict[str, LowRankDelta], fmt: str, out: Path, metadata: dict[str, str]) -> dict:
        """One adapter per key row: the piece that a plain prompt selecting that row gets, as it gets it; and the
        keys, row for row, with the scope that keys prompts. Never merged: merged weights would apply every edit to
        every prompt."""
        if fmt == "merged":
            raise MergedScopedExport()
        rows, keys = [], []
        for edit_id, delta in active.items():
            meta = ScopedMeta.read(delta.meta)
            steps, radii, n_forms = meta.scope_scale, meta.radii, len(meta.form_names())  # radii: with a bank
            for row, pieces in enumerate(self.scope.store.pieces(edit_id, delta)):
                path = f"adapters/{edit_id}-{row}"
                to_peft([pieces[PLAIN]], self.model, out / path,
                        {**metadata, "mend_edit_id": edit_id, "mend_key_row": str(row)})
                rows.append({"adapter": path, "edit_id": edit_id, "key_row": row, "keys_index": len(rows),
                             "step": steps[row * n_forms] if steps else None,
                             "radius": max(radii[row], self.scope.cfg.radius) if radii else self.scope.cfg.radius})
            keys.append((delta.key if delta.key is not None else self.scope.codebook.delta(edit_id).key).float())
        out.mkdir(parents=True, exist_ok=True)
        save_file({"keys": torch.cat(keys) if keys else self.scope.codebook.keys[:0].float()}, out / KEYS_FILE,
                  metadata={"format": "mend-scope-keys", **metadata})
        self.scope.save(out / "scope")
        return {"adapters": rows, "keys": KEYS_FILE, "scope": "scope", "radius": self.scope.cfg.radius,
                "relation_radius": self.scope.cfg.relation_radius, "word_radius": self.scope.cfg.word_radius}


def scoped_fingerprint(editor_fp: str, scope: Scope) -> str:
    # Scoped events are a different log: in-place and scoped events can never be replayed into each other, nor
    # events keyed by one scope into a server keying requests with another (`mend rekey-log` moves them).
    return f"{editor_fp}+scope-{scope.fingerprint()}"


def load_scope(path: Path, editor: MENDEditor) -> Scope:
    if not (path / "scope.json").is_file():
        raise FileNotFoundError(f"MEND_METHOD=scoped needs {path}/scope.json: fit it with `mend fit-scope`")
    return Scope.load(path, editor.layers)


METHODS: dict[str, type[EditMethod]] = {"inplace": InPlace, "scoped": Scoped}
