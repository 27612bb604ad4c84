"""The stored edits at one moment, and how a prompt's key selects one of them: the nearest key within its radius,
a relation check and a word check beside it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..delta import LowRankDelta
from .forms import PLAIN
from .keys import normed
from .meta import ScopedMeta


@dataclass(frozen=True)
class RelationCheck:
    """A second test of a selection, on the same key: whether the prompt asks the edit's relation, not only about
    its subject. The scope's key is dominated by the subject, so another question about the edited subject ("John
    Stofa, who holds a citizenship from") selected the edit ("John Stofa plays in the position of" -> midfielder)
    and its reply then said "midfielder". `map` (k, d) takes a unit key to the
    directions in which another question about the same subject differs from the edit's and another wording of the
    edit's question does not (`fit_relation`); a prompt selects an edit only where their images meet at cosine >=
    `radius` too.

    Stored keys are unit whitened states (`Scope.unit`), and a cosine ignores scale, so `map` acts on them
    directly: it is the fitted projection of centred states times the inverse whitening (`Scope.relation_check`).
    Logged edits then need nothing new, and a log replays under any check."""

    map: torch.Tensor  # (k, d)
    radius: float

    def keys(self, keys: torch.Tensor) -> torch.Tensor:
        """(n, k) unit relation keys of (n, d) unit keys."""
        return normed(keys.float() @ self.map.T)


def words_of(text: str) -> frozenset[str]:
    """The words of a text, lower-cased: what `WordCheck` compares."""
    return frozenset(re.findall(r"\w+", text.lower()))


@dataclass(frozen=True)
class WordCheck:
    """A second way into an edit's scope, by its words: a prompt that names every rare word of an edit's question
    may select the edit from cosine `radius`, below the edit's own radius. A paraphrase that misses its edit's
    radius almost always still names the edit's subject ("Jim Beam is headquartered in" for the edit of "The
    headquarter of Jim Beam is located in"); a neighbour (another subject, the same relation) never does. Another
    question about the same subject does too: the relation check (`RelationCheck`) still applies and keeps it out.
    A word is rare unless it is in `common`, the words that more than a small share of the bank's questions
    contain (`fit_words`)."""

    common: frozenset[str]
    radius: float

    def rare(self, text: str) -> frozenset[str]:
        return words_of(text) - self.common


@dataclass(frozen=True)
class Codebook:
    """The stored edits at one moment: never changed, only replaced (`Scope.add`/`remove` build a new one). A
    request that took the codebook once uses that one for its whole life, however many edits land meanwhile, so
    scoped generation needs no lock and always sees one whole log version."""

    keys: torch.Tensor  # (n_keys, d), unit rows
    owner: tuple[str, ...]  # edit id of each key row
    row_pieces: tuple[dict[str, LowRankDelta], ...]  # what each key row applies, by form (`pieces`)
    row_targets: tuple[str | None, ...]  # the answer each key row installs (None: not stored)
    row_word_end: tuple[bool, ...]  # whether each key row's delta also says the token that ends the answer's word
    deltas: MappingProxyType  # edit id -> its scoped delta; insertion order = age
    row_radius: torch.Tensor  # (n_keys,) each key row's own radius (`Scope.radii`), floored by the scope's; -inf: none
    relation: RelationCheck | None = None  # a second check a selection must also pass (`RelationCheck`)
    rel_keys: torch.Tensor | None = None  # (n_keys, k) each key row's relation key, with `relation`
    words: WordCheck | None = None  # a second way in, by the edit's rare words (`WordCheck`)
    row_words: tuple[frozenset[str], ...] = ()  # each key row's rare words (empty: none, or no `words`)

    @classmethod
    def empty(cls, dim: int, relation: RelationCheck | None = None, words: WordCheck | None = None) -> Codebook:
        rel_keys = None if relation is None else torch.zeros(0, relation.map.shape[0])
        return cls(torch.zeros(0, dim), (), (), (), (), MappingProxyType({}), torch.zeros(0), relation, rel_keys,
                   words)

    def cleared(self) -> Codebook:
        """No edit, and this codebook's checks."""
        return Codebook.empty(self.keys.shape[1], self.relation, self.words)

    def added(self, edit_id: str, delta: LowRankDelta) -> Codebook:
        if delta.key is None:
            raise ValueError("a scoped edit needs its key (LowRankDelta.key)")
        n, meta = len(delta.key), ScopedMeta.read(delta.meta)
        prompts = meta.row_prompts(n)
        rare = [self.words.rare(p) for p in prompts] if self.words is not None and prompts is not None else []
        return Codebook(torch.cat([self.keys, delta.key.float()]), self.owner + (edit_id,) * n,
                        self.row_pieces + tuple(pieces(delta)), self.row_targets + meta.row_targets(n),
                        self.row_word_end + meta.row_word_end(n), MappingProxyType({**self.deltas, edit_id: delta}),
                        torch.cat([self.row_radius, torch.tensor(meta.row_radii(n), dtype=torch.float32)]),
                        self.relation,
                        None if self.relation is None else torch.cat([self.rel_keys, self.relation.keys(delta.key)]),
                        self.words, self.row_words + tuple(rare or [frozenset()] * n))

    def without(self, *edit_ids: str) -> Codebook:
        """Without these edits (KeyError if one is not stored)."""
        gone = set(edit_ids)
        if not gone <= self.deltas.keys():
            raise KeyError(f"not in the codebook: {sorted(gone - self.deltas.keys())}")
        keep = [i for i, o in enumerate(self.owner) if o not in gone]
        return Codebook(self.keys[keep], tuple(self.owner[i] for i in keep),
                        tuple(self.row_pieces[i] for i in keep), tuple(self.row_targets[i] for i in keep),
                        tuple(self.row_word_end[i] for i in keep),
                        MappingProxyType({k: v for k, v in self.deltas.items() if k not in gone}),
                        self.row_radius[keep], self.relation, None if self.relation is None else self.rel_keys[keep],
                        self.words, tuple(self.row_words[i] for i in keep))

    def nearest(self, keys: torch.Tensor, radius: float, texts: list[str] | None = None) -> list[int | None]:
        """Per prompt key: the most similar key row at cosine >= its radius, the larger of `radius` and the row's
        own, or at cosine >= the `words` check's radius where the prompt's text (texts[b]) names every rare word of
        the row's question; and whose relation key the prompt's relation key meets at cosine >= the check's radius,
        if the codebook has a `relation` check (ties: the newest)."""
        if not self.owner:  # also: no keys computed, as nothing could be selected
            return [None] * len(keys)
        sim = keys.float() @ self.keys.T  # (B, n_keys)
        limit = self.row_radius.clamp(min=radius).expand_as(sim)
        if self.words is not None and texts is not None:
            limit = limit.clone()
            asked = [words_of(t) for t in texts]
            for b, r in ((sim >= self.words.radius) & (sim < limit)).nonzero().tolist():
                if self.row_words[r] and self.row_words[r] <= asked[b]:
                    limit[b, r] = self.words.radius
        outside = sim < limit
        if self.relation is not None:
            outside |= self.relation.keys(keys) @ self.rel_keys.T < self.relation.radius
        sim = sim.masked_fill(outside, float("-inf"))
        # Later rows are newer: flip so that argmax's first maximum is the newest.
        best = sim.flip(1).argmax(1)
        rows = len(self.owner) - 1 - best
        return [r if sim[b, r] > float("-inf") else None for b, r in enumerate(rows.tolist())]


def pieces(delta: LowRankDelta) -> list[dict[str, LowRankDelta]]:
    """What each key row of a scoped delta applies, by form: its own pieces, or the whole delta for every key (and
    form) when it has no key ranks (logs written before pieces, and deltas scoped by hand)."""
    meta = ScopedMeta.read(delta.meta)
    if meta.key_ranks is None:
        return [{PLAIN: delta}] * len(delta.key)
    forms, ranks = meta.form_names(), meta.key_ranks
    flat: list[dict] = [{} for _ in range(len(delta.key) * len(forms))]
    for name, (left, right) in delta.factors.items():
        for i, pair in enumerate(zip(left.split(ranks[name], 1), right.split(ranks[name], 0))):
            flat[i][name] = pair
    return [{form: LowRankDelta(flat[i * len(forms) + j]) for j, form in enumerate(forms)}
            for i in range(len(delta.key))]
