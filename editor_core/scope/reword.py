"""Rewording: a request that selects a stored edit in other words gets the edit computed for its own words."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import EditRequest
from ..delta import LowRankDelta
from ..layers import EditedLayer, first_block
from ..prefix_cache import PrefixCache
from .codebook import Codebook
from .config import ScopeConfig
from .forms import forms_of, in_forms
from .keys import OWN_WORDING

WORDED_PIECES = 256  # pieces computed for other wordings of stored edits kept (`Scope.worded`; 152 KB each, p50)


@dataclass(frozen=True)
class Worded:
    """A piece of a stored edit computed for one other wording of its question (`Scope.worded`): what a request in
    that wording applies if, in its own codebook, it selects key row `row` of edit `edit_id`."""

    edit_id: str
    row: int  # the key row within its edit
    piece: LowRankDelta
    word_end: bool  # whether its target was extended to end the answer's word (`Scope.edit_forms`)

    def fits(self, book: Codebook, r: int) -> bool:
        """Whether key row r of `book` is the row it was made for."""
        return self.edit_id == book.owner(r) and book.row_in_edit(r) == self.row


class Rewording:
    """Pieces of stored edits made for other wordings (part of `Scope`)."""

    cfg: ScopeConfig
    layers: list[EditedLayer]
    _worded: OrderedDict[tuple, tuple[LowRankDelta, bool] | None]
    _worded_lock: threading.Lock
    _wording_lock: threading.Lock

    def worded(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, editor, text: str, form: str,
               book: Codebook | None = None, rel_tol: float = 0.0, dtype: torch.dtype | None = None) -> Worded | None:
        """For a request asking `text` in `form`: when it selects a stored edit of `book` in a wording other than
        the edit's own, that edit's piece computed afresh for this wording, as `compute` computes an edit's (MEND's
        delta of `text` -> the edit's target in this form, its word end, step and tuning on this wording). None when
        it selects nothing, selects the edit's own wording, or the edit stores no target.

        Why: a piece is made to give its target on its own prompt, and another wording of the question selects the
        edit far more often than the piece makes it answer. The scope already decided that the request asks this
        edit's question, so the edit is made for the words it was asked in. The first request in a wording pays for
        one edit of one form; the piece is kept (WORDED_PIECES) for the next."""
        book = book or self.codebook
        chosen = self.selected(model, tok, text, book)
        if chosen is None:
            return None
        return self.worded_for(model, tok, editor, text, form, book, *chosen, rel_tol, dtype)

    def worded_for(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, editor, text: str, form: str,
                   book: Codebook, key: torch.Tensor, r: int, rel_tol: float = 0.0,
                   dtype: torch.dtype | None = None) -> Worded | None:
        """`worded` for a request whose key `key` selects row `r` of `book` (`Scope.selected`)."""
        # Own words: the whole prompt, not its best sentence suffix (a preamble before the edit prompt is other words).
        if book.target(r) is None or \
                float(self.prompt_keys(model, tok, [text])[0] @ book.keys[r]) >= OWN_WORDING:
            return None
        edit_id, target = book.owner(r), book.target(r)
        row, memo = book.row_in_edit(r), (id(model), id(editor), rel_tol, dtype, form, text, target)
        with self._wording_lock:  # one piece at a time: an edit's forwards take the cores anyway
            with self._worded_lock:
                if memo in self._worded:  # also computed by a request that held the work lock before this one
                    self._worded.move_to_end(memo)
                    made = self._worded[memo]
                    return made and Worded(edit_id, row, *made)
            forms = forms_of(tok)
            request = in_forms(tok, [EditRequest(text, target)])[forms.index(form) if form in forms else 0]
            prefix = PrefixCache(model, first_block(self.layers))
            ended = self._ended(model, tok, [request], 1, prefix)
            piece = editor.compute_deltas(model, tok, ended, prefix=prefix)[0]
            if rel_tol or dtype:
                piece = piece.compressed(rel_tol, dtype)
            (piece, _), = self._stepped(model, tok, [piece], [key[None]], ended, prefix)
            # A non-finite piece would poison the whole decoding batch: the request gets the stored piece instead.
            made = (LowRankDelta(piece.factors), ended[0].target != request.target) if piece.finite() else None
            with self._worded_lock:
                self._worded[memo] = made
                while len(self._worded) > WORDED_PIECES:
                    self._worded.popitem(last=False)
        return made and Worded(edit_id, row, *made)
