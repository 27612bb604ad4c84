"""Scoped edits: each edit's low-rank delta acts only on prompts whose key lies within a radius of the edit's own.

In-place MEND edits interfere: every delta moves the output of every input that is not orthogonal to its
u-factors, and after a few dozen sequential edits the model collapses. A scoped edit is a GRACE-style codebook
entry whose value is MEND's delta: a prompt's key is the mean of one middle block's hidden states over its tokens,
centred, whitened and normalised; a request gets the delta of the nearest edit key within its radius (ties: the
newest), and the weights never change. Locality then holds by construction outside the radius.

Keys come from a block of the unedited model, so they do not drift as edits pile up; new deltas are computed on
the unedited weights, so an edit never depends on which others happen to be stored. Edits sent together keep
their own pieces, one per key row and form (`pieces`).

The parts, each readable alone: forms.py (plain and chat requests), keys.py (how a prompt is keyed),
codebook.py (the stored edits and selection: radius, relation check, word check), index.py (where a key finds its
candidates among many edits), meta.py (what a scoped delta carries), compute.py (a scoped edit's steps and tuning),
reword.py (an edit made for other words), selection.py (when a reply lets go of its edit), apply.py (the edits
acting on forwards), fit.py (fitting a scope to a model), io.py (on disk), store.py (where an edit's factors come
from), scope.py (`Scope`, the object that puts them together).
"""
from .apply import Ask, Choice, RowDeltas
from .codebook import Codebook, RelationCheck, WordCheck, codebook_from_state, codebook_state, pieces, words_of
from .config import ScopeConfig
from .fit import (
                  RELATION_RADII,
                  WORD_RADII,
                  calibration_rates,
                  fit_relation,
                  fit_scope,
                  fit_word_radius,
                  fit_words,
                  key_block_candidates,
)
from .forms import CHAT, PLAIN, forms_of, in_forms
from .index import IndexConfig, KeyIndex
from .keys import sentence_suffixes
from .meta import ScopedMeta
from .reword import Worded
from .scope import Scope
from .selection import ANSWER_SLACK, Selection
from .store import DIGEST, THREADS, PieceStore, factors_digest, is_definition

__all__ = [
    "ANSWER_SLACK", "CHAT", "DIGEST", "PLAIN", "RELATION_RADII", "THREADS", "WORD_RADII", "Ask", "Choice", "Codebook",
    "IndexConfig", "KeyIndex", "PieceStore", "RelationCheck", "RowDeltas", "Scope", "ScopeConfig", "ScopedMeta",
    "Selection", "WordCheck", "Worded", "calibration_rates", "codebook_from_state", "codebook_state",
    "factors_digest", "fit_relation", "fit_scope", "fit_word_radius", "fit_words", "forms_of", "in_forms",
    "is_definition", "key_block_candidates", "pieces", "sentence_suffixes", "words_of",
]
