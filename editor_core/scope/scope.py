"""The scope: keys of prompts and the edits they select, put together from its parts."""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..delta import LowRankDelta
from ..layers import EditedLayer
from . import io
from .apply import Applying
from .codebook import Codebook, RelationCheck, WordCheck, pieces
from .compute import Computing
from .config import ScopeConfig
from .index import IndexConfig
from .keys import Keying
from .reword import Rewording
from .store import PieceStore


class Scope(Keying, Computing, Rewording, Applying):
    """Keys of prompts and the edits they select: the state its parts share (keys.py, compute.py, reword.py,
    apply.py), the codebook's life (add, remove, select), and what a log's fingerprint covers."""

    def __init__(self, cfg: ScopeConfig, layers: list[EditedLayer], center: torch.Tensor,
                 proj: torch.Tensor | None = None, bank: torch.Tensor | None = None,
                 relation: torch.Tensor | None = None, common: frozenset[str] | None = None) -> None:
        self.cfg, self.layers, self.center = cfg, layers, center
        # (d, d) applied to the centred state before normalising: a whitening that shrinks the directions in which
        # a question's wordings differ (`fit_scope`). None: the centred state itself.
        self.proj = proj
        # (M, d) unit keys of other questions (training edit prompts, `with_bank`) that no new edit's scope may
        # cover (`radii`). None: every edit has the scope's radius.
        self.bank = bank
        # (k, d) applied to the centred state: the relation projection of `RelationCheck` (`fit_relation`). None,
        # or cfg.relation_radius None: no relation check.
        self.relation = relation
        # The words too common to name an edit (`WordCheck`, `fit_words`). None, or cfg.word_radius None: edits are
        # selected by their keys alone.
        self.common = common
        # Stored edits' pieces, shared by every codebook: bounded and recomputing where the caller sets it up.
        self.store = PieceStore(split=pieces)
        # How a codebook finds candidate edits once it holds many (None: the exact scan at any size).
        self.index_cfg: IndexConfig | None = IndexConfig()
        # replaced whole by add/remove, never changed in place
        self.codebook = self.empty()
        self._local = threading.local()
        self._handles: list = []
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> pooled state (`pooled_prompts`)
        self._memo_lock, self._memo_model = threading.Lock(), None
        # (model, editor, compression, form, text, target) -> `worded`'s piece and word end (None: not finite): all
        # it depends on (the edit's key only selects). The cache lock guards the dict; the work lock lets one piece
        # be computed at a time, while cache hits go on.
        self._worded: OrderedDict[tuple, tuple[LowRankDelta, bool] | None] = OrderedDict()
        self._worded_lock, self._wording_lock = threading.Lock(), threading.Lock()

    # The current codebook's fields, for reading.
    deltas = property(lambda self: self.codebook.deltas)

    pieces = staticmethod(pieces)

    def relation_check(self) -> RelationCheck | None:
        """The codebook's `RelationCheck`: the relation projection carried over to unit keys (times the inverse
        whitening), or None without a projection or a radius."""
        if self.relation is None or self.cfg.relation_radius is None:
            return None
        carry = self.relation if self.proj is None else self.relation @ torch.linalg.inv(self.proj.double()).float()
        return RelationCheck(carry, self.cfg.relation_radius)

    def word_check(self) -> WordCheck | None:
        """The codebook's `WordCheck`, or None without common words or a radius."""
        if self.common is None or self.cfg.word_radius is None:
            return None
        return WordCheck(self.common, self.cfg.word_radius)

    def empty(self) -> Codebook:
        """A codebook with no edit and this scope's checks."""
        return Codebook.empty(self.center.numel(), self.relation_check(), self.word_check(), self.store,
                              self.index_cfg)

    def with_relation(self, relation: torch.Tensor | None, radius: float | None) -> Scope:
        """This scope with this relation check (None: none), its stored edits kept."""
        self.relation, self.cfg.relation_radius = relation, radius
        return self._rebuilt()

    def with_words(self, common: frozenset[str] | None, radius: float | None) -> Scope:
        """This scope with this word check (None: none), its stored edits kept."""
        self.common, self.cfg.word_radius = common, radius
        return self._rebuilt()

    def _rebuilt(self) -> Scope:
        stored, self.codebook = self.codebook.deltas, self.empty()
        for edit_id, delta in stored.items():
            self.add(edit_id, delta)
        return self

    @classmethod
    def fit(cls, model: PreTrainedModel, tok: PreTrainedTokenizerBase, layers: list[EditedLayer], prompts: list[str],
            cfg: ScopeConfig | None = None) -> Scope:
        """The centre is the mean over generic prompts: without it every prompt's mean hidden state shares one
        large component and all cosines sit near 1."""
        scope = cls(cfg or ScopeConfig(), layers, torch.zeros(model.config.hidden_size))
        scope.center = scope.pooled_prompts(model, tok, prompts).double().mean(0).float()
        return scope

    def save(self, path: str | Path) -> None:
        io.save(self, path)

    @classmethod
    def load(cls, path: str | Path, layers: list[EditedLayer]) -> Scope:
        return io.load(cls, path, layers)

    def selected(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, text: str,
                 book: Codebook | None = None) -> tuple[torch.Tensor, int] | None:
        """The request key of `text` and the key row of `book` it selects, or None when it selects nothing."""
        book = book or self.codebook
        if not book.live or not text.strip():
            return None
        key = self.request_keys(model, tok, [text], book)[0]
        r = book.nearest(key[None], self.cfg.radius, [text])[0]
        return None if r is None else (key, r)

    def add(self, edit_id: str, delta: LowRankDelta) -> None:
        self.codebook = self.codebook.added(edit_id, delta)

    def remove(self, *edit_ids: str) -> None:
        """Forget these edits, all or none (KeyError, nothing forgotten, if one is not stored)."""
        self.codebook = self.codebook.without(*edit_ids)

    def clear(self) -> None:
        self.codebook = self.empty()

    def select(self, keys: torch.Tensor, book: Codebook | None = None,
               texts: list[str] | None = None) -> list[str | None]:
        """Per prompt key (of the prompt texts[b], if given): the edit whose key it selects (`Codebook.nearest`), or
        None."""
        book = book or self.codebook
        return [None if r is None else book.owner(r) for r in book.nearest(keys, self.cfg.radius, texts)]

    # ---- applying ------------------------------------------------------------------------------------------


    def fingerprint(self) -> str:
        # These (and the bank) only pick the delta of new edits, and the log stores each delta as it was picked
        # (with meta["word_end"] and meta["radii"]), so a log replays the same under any of them. The relation check
        # reads the stored keys as they are (`RelationCheck`), the word check the stored prompts (`WordCheck`): the
        # same log under any check, or none.
        cfg = {k: v for k, v in asdict(self.cfg).items()
               if k not in ("max_scale", "tune_steps", "tune_lr", "end_words", "bank_margin", "relation_radius",
                            "word_radius")}
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        h.update(self.center.contiguous().numpy().tobytes())
        if self.proj is not None:  # stored keys live in the projected space: another projection, another log
            h.update(self.proj.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
