"""Applying scoped edits: each row of a batch adds the piece of the edit it selected, through the forward hooks of
editor_core.hooks, thread by thread."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..delta import LowRankDelta
from ..hooks import RowFactors, add_row_deltas, on_block_input
from ..layers import EditedLayer, find_blocks, first_block
from .codebook import Codebook
from .config import ScopeConfig
from .forms import PLAIN
from .keys import sentence_suffixes
from .reword import Worded
from .selection import Selection


@dataclass(frozen=True)
class Choice:
    """The edit one request selected: the piece that acts on its forwards (the one for the form it was asked in),
    and the selection that says when it stops acting."""

    piece: LowRankDelta
    selection: Selection


@dataclass(frozen=True)
class Ask:
    """What a generation selects its scoped edit by: its question, the form it is asked in (PLAIN or CHAT), the
    codebook it reads, taken once for its whole life, and the piece computed for its wording, if any."""

    text: str
    form: str
    book: Codebook
    worded: Worded | None = None


@dataclass(frozen=True)
class RowDeltas:
    """The deltas of a batch's rows, stacked for one batched product per edited layer: by layer name, the rows that
    carry a delta for it, and their factors as down (n, in, R) and up (n, R, out) in the orientation of the layer's
    input, out[rows] += (x[rows] @ down) @ up. Ranks are zero-padded to the largest: a zero rank adds nothing."""

    layers: dict[str, RowFactors]


class Applying:
    """Scoped edits acting on forwards (part of `Scope`): thread by thread, as the capture hooks, so a forward in
    another thread sees no scoped edit unless that thread selected one."""

    cfg: ScopeConfig
    layers: list[EditedLayer]
    codebook: Codebook
    _local: threading.local
    _handles: list[RemovableHandle]

    def attach(self, model: PreTrainedModel) -> None:
        """Hooks on the edited modules that add each row's selected delta, and on the block after the key block
        that keys a prompt on its way (`choosing`); they do nothing unless a thread opened `acting`, `applying`
        or `choosing`."""
        for layer in self.layers:
            self._handles.append(add_row_deltas(model.get_submodule(layer.module), self._rows_now(layer.name)))
        _, blocks = find_blocks(model)
        self._handles.append(on_block_input(blocks[self.cfg.key_block + 1], self._keying))

    @contextlib.contextmanager
    def _attached(self, model: PreTrainedModel):
        """The hooks attached for a check made while computing an edit: the service's own (already attached) if
        there are, else attached for this check and removed after."""
        if self._handles:
            yield
            return
        self.attach(model)
        try:
            yield
        finally:
            self.detach()

    def _keying(self, hidden: torch.Tensor) -> None:
        keying = getattr(self._local, "keying", None)
        if keying is not None:
            self._local.keying = None  # the prompt's own prefill only
            keying(hidden)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _rows_now(self, name: str) -> Callable[[], RowFactors | None]:
        def rows_now() -> RowFactors | None:
            deltas = getattr(self._local, "rows", None)
            return None if deltas is None else deltas.layers.get(name)

        return rows_now

    def stacked(self, pieces: list[LowRankDelta | None]) -> RowDeltas | None:
        """Row b of a batch adds pieces[b] (None: nothing), stacked for the hooks (`RowDeltas`); built once for a
        batch, not at every forward."""
        layers = {}
        for layer in self.layers:
            rows = [(b, p.factors[layer.name]) for b, p in enumerate(pieces)
                    if p is not None and layer.name in p.factors]
            if not rows:
                continue
            rank = max(left.shape[1] for _, (left, _) in rows)
            down = torch.zeros(len(rows), layer.in_features, rank)
            up = torch.zeros(len(rows), rank, layer.out_features)
            for i, (_, (left, right)) in enumerate(rows):
                # ΔW = left @ right in the weight's storage orientation: (out, in) for Linear, (in, out) for Conv1D.
                d, u = (left, right) if layer.transposed else (right.T, left.T)
                down[i, :, : d.shape[1]], up[i, : u.shape[0]] = d, u
            layers[layer.name] = (torch.tensor([b for b, _ in rows]), down, up)
        return RowDeltas(layers) if layers else None

    @contextlib.contextmanager
    def acting(self, deltas: RowDeltas | None):
        """Within this context, this thread's forwards add `deltas` (`stacked`), row by row."""
        saved, self._local.rows = getattr(self._local, "rows", None), deltas
        try:
            yield
        finally:
            self._local.rows = saved

    @contextlib.contextmanager
    def applying(self, keys: torch.Tensor, form: str = PLAIN, book: Codebook | None = None,
                 worded: list[Worded | None] | None = None, texts: list[str] | None = None):
        """Within this context, this thread's forwards of a batch whose row b has key keys[b] add each row's
        selected edit (see `select`; texts[b]: the row's prompt, for the word check) of `book` (default: the current
        codebook), its piece for `form` (the plain one if it has none), or worded[b]'s piece where that was made for
        the row selected. Yields the `Selection` (its edit ids). For teacher-forced scoring: a generation selects
        with `choose`, and releases its edit once the answer is said."""
        book = book or self.codebook
        rows = book.nearest(keys, self.cfg.radius, texts)
        worded = worded or [None] * len(rows)
        pieces = [None if r is None else w.piece if w is not None and w.fits(book, r)
                  else _for_form(book.row_pieces(r), form) for r, w in zip(rows, worded)]
        with self.acting(self.stacked(pieces)):
            yield Selection([None if r is None else book.owner(r) for r in rows],
                            [None if r is None else book.target(r) for r in rows])

    def choose(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, asks: list[tuple[str, str]],
               book: Codebook | None = None) -> list[Choice | None]:
        """Per generation request, its question `text` asked in `form` (PLAIN or CHAT): the edit of `book`
        (default: the current codebook) that the question selects (`_choice`), or None. Each question is keyed
        alone, as in a request of its own."""
        book = book or self.codebook
        return [self._choice(tok, Ask(text, form, book), self.request_keys(model, tok, [text], book)[0])
                if book.live and text.strip() else None for text, form in asks]

    def _choice(self, tok: PreTrainedTokenizerBase, ask: Ask, key: torch.Tensor) -> Choice | None:
        """The edit the request key `key` selects in the ask's codebook, its piece for the ask's form, and a
        selection that releases it once its answer is said or has gone wrong (the target's token count tells
        when)."""
        book = ask.book
        r = book.nearest(key[None], self.cfg.radius, [ask.text])[0]
        if r is None:
            return None
        target = book.target(r)
        length = None if target is None else len(tok(" " + target.strip(), add_special_tokens=False)["input_ids"])
        piece, word_end = _for_form(book.row_pieces(r), ask.form), book.word_end(r)
        if ask.worded is not None and ask.worded.fits(book, r):  # made for this wording of the edit selected
            piece, word_end = ask.worded.piece, ask.worded.word_end
        return Choice(piece, Selection([book.owner(r)], [target], [length], strict=ask.form == PLAIN,
                                       word_end=word_end))

    def keyed_on_the_way(self, tok: PreTrainedTokenizerBase, ask: Ask, ids: list[int]) -> bool:
        """Whether the prefill of prompt `ids` computes the ask's request key on its way: the prompt is the plain
        question itself, of one sentence (no suffix candidates), and every edited layer lies above the key block,
        so no edit changes what the key is pooled from."""
        return (ask.form == PLAIN and sentence_suffixes(ask.text) == [ask.text]
                and self.cfg.key_block < first_block(self.layers)
                and tok(ask.text)["input_ids"] == ids)

    @contextlib.contextmanager
    def choosing(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, asks: list[Ask | None],
                 contexts: list[list[int]], mask: torch.Tensor):
        """For one prefill in this thread of a batch of generations, left-padded (`mask`), row b the tokens
        contexts[b] of a request that selects its edit by asks[b] (None: nothing to select): the edit each ask
        selects acts on that forward, and the yielded list holds each row's `Choice` (or None) after it. A prompt
        that is its own plain question (`keyed_on_the_way`) is keyed inside the prefill, at the input of block
        key_block + 1, before any edited block runs: no forward of its own, where keying first costs a third of
        one. The other asks are keyed first (`request_keys`), and each applies the piece
        made for its wording (`Ask.worded`) when it selects the edit that piece was made for."""
        chosen: list[Choice | None] = [None] * len(asks)
        live = [b for b, a in enumerate(asks) if a is not None and a.book.live and a.text.strip()]
        on_the_way = [b for b in live if self.keyed_on_the_way(tok, asks[b], contexts[b])]
        for b in live:
            if b not in on_the_way:
                chosen[b] = self._choice(tok, asks[b], self.request_keys(model, tok, [asks[b].text], asks[b].book)[0])

        def keying(hidden: torch.Tensor) -> None:
            keys = self.unit(self._pool(hidden, mask))
            for b in on_the_way:
                chosen[b] = self._choice(tok, asks[b], keys[b])
            self._local.rows = self.stacked([c and c.piece for c in chosen])

        with self.acting(self.stacked([c and c.piece for c in chosen])):
            self._local.keying = keying if on_the_way else None
            try:
                yield chosen
            finally:
                missed, self._local.keying = self._local.keying is not None, None
        if missed:
            raise RuntimeError("the prefill never reached the key block: are the scope's hooks attached?")

    def applying_to(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                    form: str = PLAIN, book: Codebook | None = None, worded: list[Worded | None] | None = None):
        """`applying` with the request keys of these prompts."""
        book = book or self.codebook
        keys = self.request_keys(model, tok, prompts, book) if book.live else torch.zeros(len(prompts), 0)
        return self.applying(keys, form, book, worded, prompts)


    def off(self):
        """Within this context, this thread's forwards add no scoped edit."""
        return self.acting(None)

    @contextlib.contextmanager
    def aside(self):
        """Within this context, this thread's forwards are its own: no edit acts and no prefill waits for its key.
        For work done in the middle of a forward of this thread (a stored edit recomputed as it is selected)."""
        saved = getattr(self._local, "rows", None), getattr(self._local, "keying", None)
        self._local.rows = self._local.keying = None
        try:
            yield
        finally:
            self._local.rows, self._local.keying = saved


def _for_form(pieces: dict[str, LowRankDelta], form: str) -> LowRankDelta:
    return pieces.get(form, pieces[PLAIN])  # the plain piece for a form the edit has none for
