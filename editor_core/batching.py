"""Continuous batching: the rows of concurrent requests decoded together, one forward a step for all of them.

A request joins at the next step and leaves when it is done. The requests joining at one step are prefilled together
(one forward, left-padded), and their KV cache is merged into the batch's: rows left-padded to the longest, an
attention mask over the padding and explicit position ids per row, so that each row attends to its own tokens at
its own positions. On a CPU one forward over several prompts costs well under one forward each (its matrix
products are larger, and run closer to the machine's peak). Each row samples with its own generator and settings, cuts
at its own stop strings and carries its own scoped edit (a low-rank delta per row; the scope's hooks add them all in one
batched product). When a row's edit is released (its answer said), the cache built under the edit is dropped and the row
joins again with a prefill of prompt + reply without it: the rest is what the unedited model says after that text.

A batch of one is the single-request path (`stream_tokens`, `complete`). Nothing here knows of threads or HTTP: the
service runs a Batch in one decode thread (service/batcher.py).
"""
from __future__ import annotations

import contextlib
from collections.abc import Generator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache, DynamicLayer

from . import generation
from .generation import Completion, cut_at_stop, end_token_ids, settled
from .scope import Ask, Choice, RowDeltas, Scope


@dataclass(eq=False)
class Row:
    """One request being decoded: its prompt, sampling settings and own generator, the scoped edit acting on it,
    and what it has said. `take` hands over the text settled since the last call; `done` is set when it ends."""

    ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ask: Ask | None = None  # what selects its scoped edit, at its first prefill
    edit: Choice | None = field(default=None, init=False)  # the edit selected; it acts until it is released
    new: list[int] = field(default_factory=list, init=False)
    text: str = field(default="", init=False)
    done: Completion | None = field(default=None, init=False)
    cancelled: bool = field(default=False, init=False)  # set from any thread: the row leaves at the next step
    _pieces: list[str] = field(default_factory=list, init=False)
    _sent: int = field(default=0, init=False)
    _gen: torch.Generator = field(default_factory=torch.Generator, init=False)

    def __post_init__(self) -> None:
        self._gen.manual_seed(self.seed) if self.seed is not None else self._gen.seed()

    def take(self) -> list[str]:
        pieces, self._pieces = self._pieces, []
        return pieces


class Batch:
    """Rows decoded together over one model (and one scope, whose hooks add each row's edit)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, scope: Scope | None = None) -> None:
        self.model, self.tokenizer, self.scope = model, tokenizer, scope
        self.ends = end_token_ids(model, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.rows: list[Row] = []
        self._cache: DynamicCache | None = None  # row b of every layer is rows[b]'s, left-padded to one length
        self._mask: torch.Tensor | None = None  # (B, L): 1 on real tokens, 0 on padding
        self._deltas: RowDeltas | None = None  # the rows' edits stacked for the hooks, rebuilt when rows change
        self._stale = True
        # A cache of other layers (sliding windows, linear attention) is not padded here: one row at a time.
        self.mergeable = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)

    def room(self, limit: int) -> int:
        """How many rows may join now, with at most `limit` in the batch."""
        if not self.mergeable:
            return 0 if self.rows else 1
        return max(0, limit - len(self.rows))

    @torch.no_grad()
    def join(self, rows: list[Row]) -> None:
        """Prefill these rows together (one forward, left-padded) and pick their first tokens; those it did not end
        decode with the batch from the next step."""
        for row in rows:
            if row.max_new_tokens <= 0:
                row.done = Completion("", 0, "length")
        self._start([r for r in rows if r.done is None])

    @torch.no_grad()
    def step(self) -> list[Row]:
        """One token for every row. Returns the rows it ran: those that ended have their last pieces and `done`,
        and have left the batch."""
        self._drop([r for r in self.rows if r.cancelled])
        rows = list(self.rows)
        if not rows:
            return rows
        device = self.model.device
        x = torch.tensor([[r.new[-1]] for r in rows], device=device)
        mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], 1)
        at = torch.tensor([[len(r.ids) + len(r.new) - 1] for r in rows], device=device)  # each row's own position
        with self._acting(rows):
            out = self.model(input_ids=x, attention_mask=mask, position_ids=at, cache=self._cache, use_cache=True,
                             logits_to_keep=1)
        self._mask = mask
        logits = out.logits[:, -1].float().cpu()
        again = [r for r, row_logits in zip(rows, logits) if self._advance(r, row_logits)]
        self._drop([r for r in rows if r.done is not None or r in again])
        self._start(again)
        return rows

    # ---- rows joining --------------------------------------------------------------------------------------

    def _start(self, rows: list[Row]) -> None:
        """Prefill the rows' prompts and replies so far, pick their next tokens, and merge their caches into the
        batch; again, without their edits, the rows whose new token released it."""
        while rows:
            cache, mask, logits = self._prefill(rows)
            again = [r for r, row_logits in zip(rows, logits) if self._advance(r, row_logits)]
            keep = [i for i, r in enumerate(rows) if r.done is None and r not in again]
            if keep:
                self._merge([rows[i] for i in keep], *_selected(cache, mask, keep))
            rows = again

    def _prefill(self, rows: list[Row]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """One forward over the rows' contexts, left-padded: (cache, mask, each row's next-token logits). A row
        with an ask selects its edit in it (`Scope.choosing`)."""
        device = self.model.device
        contexts = [r.ids + r.new for r in rows]
        width = max(map(len, contexts))
        ids = torch.tensor([[self.pad] * (width - len(c)) + c for c in contexts], device=device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
        padded = {} if bool(mask.all()) else {"attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp_min(0)}
        with self._choosing(rows, contexts, mask):
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **padded)
        return out.cache, mask, out.logits[:, -1].float().cpu()

    @contextlib.contextmanager
    def _choosing(self, rows: list[Row], contexts: list[list[int]], mask: torch.Tensor):
        """A new row's first prefill selects its edit (its ask); a row prefilled again after its release has none."""
        if self.scope is None or all(r.ask is None for r in rows):
            yield
            return
        asks = [r.ask for r in rows]
        with self.scope.choosing(self.model, self.tokenizer, asks, contexts, mask) as chosen:
            yield
        for r, choice in zip(rows, chosen):
            r.edit, r.ask = choice, None

    def _advance(self, row: Row, logits: torch.Tensor) -> bool:
        """Pick the row's next token and settle its text. True when that released its edit and the row goes on:
        its cache, built under the edit, must then be built again."""
        tok = generation.pick(logits, row.temperature, row.top_p, row._gen)
        if tok in self.ends:
            self._finish(row, row.text, "stop")
            return False
        row.new.append(tok)
        text = row.text = self.tokenizer.decode(row.new, skip_special_tokens=True)
        released = row.edit is not None and row.edit.selection.observe(text)
        cut = cut_at_stop(text, row.stop)
        if cut is not None:
            self._finish(row, cut, "stop")
            return False
        if (end := settled(text, row.stop)) > row._sent:
            row._pieces.append(text[row._sent: end])
            row._sent = end
        if len(row.new) >= row.max_new_tokens:
            self._finish(row, text, "length")
            return False
        return released

    @staticmethod
    def _finish(row: Row, text: str, reason: str) -> None:
        if len(text) > row._sent:
            row._pieces.append(text[row._sent:])
            row._sent = len(text)
        row.done = Completion(text, len(row.new), reason)

    def _acting(self, rows: list[Row]):
        """The decoding forwards of the batch's rows, each adding its own edit (stacked once per set of rows)."""
        if self.scope is None:
            return contextlib.nullcontext()
        if self._stale:
            self._deltas, self._stale = self.scope.stacked([_acting_piece(r) for r in rows]), False
        return self.scope.acting(self._deltas)

    # ---- the batch's cache ---------------------------------------------------------------------------------

    def _merge(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add rows whose (left-padded) cache and mask are these."""
        if not self.rows:
            self._cache, self._mask = cache, mask
        else:
            have, n = self._mask.shape[1], mask.shape[1]
            length = max(have, n)
            for mine, theirs in zip(self._cache.layers, cache.layers):
                mine.keys = torch.cat([_pad_left(mine.keys, length - have), _pad_left(theirs.keys, length - n)])
                mine.values = torch.cat([_pad_left(mine.values, length - have), _pad_left(theirs.values, length - n)])
            self._mask = torch.cat([F.pad(self._mask, (length - have, 0)), F.pad(mask, (length - n, 0))])
        self.rows += rows
        self._stale = True

    def _drop(self, gone: list[Row]) -> None:
        keep = [i for i, r in enumerate(self.rows) if r not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows, self._stale = [self.rows[i] for i in keep], True
        if keep:
            self._cache, self._mask = _selected(self._cache, self._mask, keep)
        else:
            self._cache = self._mask = None


def _selected(cache: DynamicCache, mask: torch.Tensor, keep: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """These rows of a left-padded cache, without the columns that are padding in all of them."""
    if len(keep) == len(mask) and bool(mask[:, 0].any()):
        return cache, mask
    idx = torch.tensor(keep, device=mask.device)
    mask = mask[idx]
    start = int(mask.any(0).nonzero()[0])
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[idx, :, start:], layer.values[idx, :, start:]
    return cache, mask[:, start:]


def _acting_piece(row: Row):
    return row.edit.piece if row.edit is not None and not row.edit.selection.released else None


def _pad_left(kv: torch.Tensor, n: int) -> torch.Tensor:
    """(B, heads, L, d) -> (B, heads, n + L, d), zeros before."""
    return F.pad(kv, (0, 0, n, 0)) if n else kv


def stream_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, input_ids: list[int],
                  max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                  stop: list[str] | None = None, ask: Ask | None = None,
                  scope: Scope | None = None) -> Generator[str, None, Completion]:
    """One request decoded alone (a batch of one): yields pieces of its text, each as soon as no later token can
    change it or make it part of a stop string, and returns the Completion, whose text the pieces add up to.
    The scoped edit `ask` selects in `scope` acts on its forwards until its answer is said."""
    row = Row(input_ids, max_new_tokens, temperature, top_p, seed, stop or [], ask)
    batch = Batch(model, tokenizer, scope)
    batch.join([row])
    while True:
        yield from row.take()
        if row.done is not None:
            return row.done
        batch.step()


def complete(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, input_ids: list[int], max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
             ask: Ask | None = None, scope: Scope | None = None) -> Completion:
    """The whole reply at once: `stream_tokens`, run to its end."""
    tokens = stream_tokens(model, tokenizer, input_ids, max_new_tokens, temperature, top_p, seed, stop, ask, scope)
    while True:
        try:
            next(tokens)
        except StopIteration as end:
            return end.value
