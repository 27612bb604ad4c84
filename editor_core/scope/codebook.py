"""The stored edits at one moment, and how a prompt's key selects one of them: the nearest key within its radius,
a relation check and a word check beside it."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..delta import LowRankDelta
from .forms import PLAIN
from .index import IndexConfig, KeyIndex
from .keys import normed
from .meta import ScopedMeta
from .store import PieceStore, is_definition, is_lazy


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
    # Short texts come back (canaries at every guard check, questions): those are remembered, long ones not.
    return _short_words(text) if len(text) <= 300 else frozenset(re.findall(r"\w+", text.lower()))


@functools.lru_cache(maxsize=16384)
def _short_words(text: str) -> frozenset[str]:
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


class _Rows:
    """Every key row ever added to a line of codebooks, append-only and shared by its versions: a version reads its
    first `n` rows, less those removed at or before its own version number. Adding an edit appends (amortised
    O(1): capacity doubles), removing one stamps its rows; neither copies the rows of other edits."""

    def __init__(self, dim: int, relation: RelationCheck | None, words: WordCheck | None, store: PieceStore,
                 index: IndexConfig | None = None) -> None:
        self.relation, self.words, self.store = relation, words, store
        # Candidates for selection once the line has index.min_rows rows (None: always the exact scan). A copy
        # (a candidate beside the live line, a line off an older version) scans: it is short-lived.
        self.index_cfg, self.index = index, None
        self.n, self.version = 0, 0  # rows written; the newest version made from them
        self.keys = torch.zeros(0, dim)  # (capacity, d), unit rows
        self.rel_keys = None if relation is None else torch.zeros(0, relation.map.shape[0])
        self.radius = torch.zeros(0)  # each row's own radius (`Scope.radii`), floored by the scope's; -inf: none
        self.removed_at = torch.zeros(0, dtype=torch.long)  # the version that removed each row (max: never)
        self.owner: list[str] = []  # edit id of each row
        self.targets: list[str | None] = []  # the answer each row installs (None: not stored)
        self.word_end: list[bool] = []  # whether each row's delta also says the token that ends the answer's word
        self.words_of: list[frozenset[str]] = []  # each row's rare words (empty: none, or no `words`)
        self.first_row: dict[str, int] = {}
        # edit id -> its scoped delta: whole, or a definition without its key (the key is its rows: held once)
        self.deltas: dict[str, LowRankDelta] = {}

    def copy(self, n: int, version: int) -> _Rows:
        """A line of its own with the rows of version (n, version): what adding to an older version starts from."""
        out = _Rows(self.keys.shape[1], self.relation, self.words, self.store)
        out.n, out.version = n, version
        out.keys, out.radius = self.keys[:n].clone(), self.radius[:n].clone()
        removed = self.removed_at[:n]  # removals after this version did not happen on the new line
        out.removed_at = removed.masked_fill(removed > version, NEVER)
        out.rel_keys = None if self.rel_keys is None else self.rel_keys[:n].clone()
        out.owner, out.targets, out.word_end, out.words_of = (list(x[:n]) for x in (
            self.owner, self.targets, self.word_end, self.words_of))
        out.first_row = {e: r for e, r in self.first_row.items() if r < n}
        out.deltas = {e: self.deltas[e] for e in out.first_row}
        return out

    def append(self, edit_id: str, delta: LowRankDelta) -> None:
        k, meta = len(delta.key), ScopedMeta.read(delta.meta)
        prompts = meta.row_prompts(k)
        self._room(self.n + k)
        rows = slice(self.n, self.n + k)
        self.keys[rows] = delta.key.float()
        self.radius[rows] = torch.tensor(meta.row_radii(k), dtype=torch.float32)
        self.removed_at[rows] = NEVER
        if self.rel_keys is not None:
            self.rel_keys[rows] = self.relation.keys(delta.key)
        self.owner += [edit_id] * k
        self.targets += meta.row_targets(k)
        self.word_end += meta.row_word_end(k)
        self.words_of += [self.words.rare(p) for p in prompts] if self.words is not None and prompts is not None \
            else [frozenset()] * k
        self.first_row[edit_id], self.deltas[edit_id] = self.n, keyless(delta)
        self.n += k
        if self.index is not None:
            self.index.add(delta.key, self.words_of[-k:])
        elif self.index_cfg is not None and self.n >= self.index_cfg.min_rows:
            index = KeyIndex(self.keys.shape[1], self.index_cfg)
            index.add(self.keys[: self.n], self.words_of)
            self.index = index  # whole: a request reading the line meanwhile scans

    def span(self, edit_id: str) -> slice:
        """The rows of one edit (an edit's rows are adjacent)."""
        first = last = self.first_row[edit_id]
        while last < self.n and self.owner[last] == edit_id:
            last += 1
        return slice(first, last)

    def _room(self, n: int) -> None:
        if n <= len(self.keys):
            return
        cap = max(n, 2 * len(self.keys), 16)

        def grown(t: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
            out = torch.full((cap, *t.shape[1:]), fill, dtype=t.dtype)
            out[: self.n] = t[: self.n]
            return out

        # Versions reading the old tensors keep them: the rows they read are the same in both.
        self.keys, self.radius, self.removed_at = grown(self.keys), grown(self.radius), grown(self.removed_at, NEVER)
        if self.rel_keys is not None:
            self.rel_keys = grown(self.rel_keys)


NEVER = 2**62  # removed_at of a row never removed


@dataclass(frozen=True)
class Codebook:
    """The stored edits at one moment: never changed, only replaced (`Scope.add`/`remove` make a new one). A
    request that took the codebook once uses that one for its whole life, however many edits land meanwhile, so
    scoped generation needs no lock and always sees one whole log version. Row r is the r-th key row ever added
    to its line (`_Rows`); rows of removed edits stay, never selected."""

    rows: _Rows
    n: int = 0  # rows visible
    version: int = 0  # rows removed at a later version are still live here
    live: int = 0  # edits stored

    @classmethod
    def empty(cls, dim: int, relation: RelationCheck | None = None, words: WordCheck | None = None,
              store: PieceStore | None = None, index: IndexConfig | None = None) -> Codebook:
        return cls(_Rows(dim, relation, words, PieceStore(split=pieces) if store is None else store, index))

    def cleared(self) -> Codebook:
        """No edit, and this codebook's checks and store; no index (a codebook of a few edits: the guard's)."""
        return Codebook.empty(self.rows.keys.shape[1], self.relation, self.words, self.store)

    relation = property(lambda self: self.rows.relation)  # a second check a selection must pass (`RelationCheck`)
    words = property(lambda self: self.rows.words)  # a second way in, by the edit's rare words (`WordCheck`)
    store = property(lambda self: self.rows.store)  # the rows' pieces (`row_pieces`)

    @property
    def keys(self) -> torch.Tensor:
        """(n, d) unit key rows, removed ones included (never selected)."""
        return self.rows.keys[: self.n]

    def owner(self, r: int) -> str:
        return self.rows.owner[r]

    def target(self, r: int) -> str | None:
        return self.rows.targets[r]

    def word_end(self, r: int) -> bool:
        if is_lazy(self.rows.deltas[self.rows.owner[r]]):  # known from its computed pieces
            return any(p.meta.get(WORD_END) == "1" for p in self.row_pieces(r).values())
        return self.rows.word_end[r]

    def row_in_edit(self, r: int) -> int:
        """Row r's place among its own edit's key rows."""
        return r - self.rows.first_row[self.rows.owner[r]]

    def alive(self) -> torch.Tensor:
        """(n,) whether each row belongs to an edit stored in this version."""
        return self.rows.removed_at[: self.n] > self.version

    @property
    def deltas(self) -> MappingProxyType:
        """Edit id -> its scoped delta (whole, or a definition), with its key, oldest first. O(edits) and a copy of
        every key: for export and rebuilds."""
        return MappingProxyType({e: self.delta(e) for e in self.stored})

    @property
    def stored(self) -> MappingProxyType:
        """Edit id -> its delta as held (a definition without its key), oldest first: O(edits), copying nothing."""
        alive, rows = self.alive().tolist(), self.rows
        return MappingProxyType({e: rows.deltas[e] for e, r in rows.first_row.items() if r < self.n and alive[r]})

    def held(self, edit_id: str) -> LowRankDelta:
        """An edit's delta as held: whole with its key, or a definition without it (its key is its rows)."""
        return self.rows.deltas[edit_id]

    def delta(self, edit_id: str) -> LowRankDelta:
        """An edit's delta with its key (its rows)."""
        d = self.rows.deltas[edit_id]
        return d if d.key is not None else LowRankDelta(d.factors, d.meta,
                                                        self.rows.keys[self.rows.span(edit_id)].clone())

    def row_pieces(self, r: int) -> dict[str, LowRankDelta]:
        """What key row r applies, by form: held, split from a whole delta, or recomputed from its definition."""
        edit_id = self.rows.owner[r]
        return self.store.pieces(edit_id, self.rows.deltas[edit_id])[self.row_in_edit(r)]

    def added(self, edit_id: str, delta: LowRankDelta) -> Codebook:
        """With this edit added; appended to the shared rows when this is the newest version of its line, else to a
        copy of its rows (a candidate beside the live codebook)."""
        if delta.key is None:
            raise ValueError("a scoped edit needs its key (LowRankDelta.key)")
        rows = self.rows
        if (self.n, self.version) != (rows.n, rows.version) or edit_id in rows.first_row:
            rows = rows.copy(self.n, self.version)
        rows.append(edit_id, delta)
        rows.version += 1
        return Codebook(rows, rows.n, rows.version, self.live + 1)

    def beside(self, edit_id: str, delta: LowRankDelta) -> Codebook:
        """With this edit added on rows of its own (O(rows)): the live line is left as it is."""
        return Codebook(self.rows.copy(self.n, self.version), self.n, self.version, self.live).added(edit_id, delta)

    def without(self, *edit_ids: str) -> Codebook:
        """Without these edits (KeyError if one is not stored)."""
        gone, alive = set(edit_ids), self.alive()
        stored = {e for e in gone if e in self.rows.first_row and self.rows.first_row[e] < self.n
                  and bool(alive[self.rows.first_row[e]])}
        if stored != gone:
            raise KeyError(f"not in the codebook: {sorted(gone - stored)}")
        rows = self.rows
        if (self.n, self.version) != (rows.n, rows.version):
            rows = rows.copy(self.n, self.version)
        rows.version += 1
        for e in gone:
            rows.removed_at[rows.span(e)] = rows.version
        return Codebook(rows, rows.n, rows.version, self.live - len(gone))

    def nearest(self, keys: torch.Tensor, radius: float, texts: list[str] | None = None,
                exact: bool = False) -> list[int | None]:
        """Per prompt key: the most similar key row at cosine >= its radius, the larger of `radius` and the row's
        own, or at cosine >= the `words` check's radius where the prompt's text (texts[b]) names every rare word of
        the row's question; and whose relation key the prompt's relation key meets at cosine >= the check's radius,
        if the codebook has a `relation` check (ties: the newest). With an index, the rule is applied to its
        candidates (`_nearest_indexed`); `exact`: to every row."""
        if not self.live:  # also: no keys computed, as nothing could be selected
            return [None] * len(keys)
        if self.rows.index is not None and not exact:
            return [self._nearest_indexed(key, radius, None if texts is None else texts[b])
                    for b, key in enumerate(keys.float())]
        rows = self.rows
        sim = keys.float() @ self.keys.T  # (B, n_keys)
        limit = rows.radius[: self.n].clamp(min=radius).expand_as(sim)
        if self.words is not None and texts is not None:
            limit = limit.clone()
            asked = [words_of(t) for t in texts]
            for b, r in ((sim >= self.words.radius) & (sim < limit)).nonzero().tolist():
                if rows.words_of[r] and rows.words_of[r] <= asked[b]:
                    limit[b, r] = self.words.radius
        outside = (sim < limit) | ~self.alive()
        if self.relation is not None:
            outside |= self.relation.keys(keys) @ rows.rel_keys[: self.n].T < self.relation.radius
        sim = sim.masked_fill(outside, float("-inf"))
        # Later rows are newer: flip so that argmax's first maximum is the newest.
        best = sim.flip(1).argmax(1)
        picked = self.n - 1 - best
        return [r if sim[b, r] > float("-inf") else None for b, r in enumerate(picked.tolist())]

    def _nearest_indexed(self, key: torch.Tensor, radius: float, text: str | None) -> int | None:
        """`nearest` of one key among the index's candidates: the graph's k nearest rows and the rows the text
        names. Settled when no row outside them could win: the k-th is below `radius` (no other row passes by its
        key; those passing by words are all named), or the choice is at least as near as the k-th; else k grows,
        and past MAX_K the exact scan decides."""
        index, k = self.rows.index, self.rows.index.cfg.k
        named = index.named(words_of(text)) if self.words is not None and text is not None else []
        while k <= MAX_K:
            sim, rows = index.near(key[None], k)
            near = rows[0][rows[0] >= 0]
            row, best = self._among(key, radius, text, torch.tensor(sorted(set(near.tolist()) | set(named))))
            kth = float(sim[0, -1])
            # On a tie with the k-th, a newer row of the same cosine may lie past it: widen.
            if len(near) < k or kth < radius or (row is not None and best > kth):
                return row
            k *= 4
        row, _ = self._among(key, radius, text, torch.arange(self.n))
        return row

    def _among(self, key: torch.Tensor, radius: float, text: str | None,
               rows: torch.Tensor) -> tuple[int | None, float]:
        """The row `nearest` picks for one key among these rows (ascending), and its cosine."""
        rows = rows[rows < self.n]
        if not len(rows):
            return None, float("-inf")
        line = self.rows
        sim = line.keys[rows] @ key
        limit = line.radius[rows].clamp(min=radius)
        if self.words is not None and text is not None:
            asked = words_of(text)
            for j in ((sim >= self.words.radius) & (sim < limit)).nonzero().flatten().tolist():
                ws = line.words_of[int(rows[j])]
                if ws and ws <= asked:
                    limit[j] = self.words.radius
        ok = (sim >= limit) & (line.removed_at[rows] > self.version)
        if self.relation is not None:
            ok &= line.rel_keys[rows] @ self.relation.keys(key[None])[0] >= self.relation.radius
        sim = sim.masked_fill(~ok, float("-inf"))
        j = len(rows) - 1 - int(sim.flip(0).argmax())  # the newest of the nearest
        return (int(rows[j]), float(sim[j])) if ok[j] else (None, float("-inf"))

    def best_sim(self, keys: torch.Tensor) -> torch.Tensor:
        """(B,) each key's highest cosine to a stored edit's key row (-inf: none stored)."""
        if not self.live:
            return torch.full((len(keys),), float("-inf"))
        if self.rows.index is None:
            return (keys.float() @ self.keys.T).masked_fill(~self.alive(), float("-inf")).max(1).values
        return torch.stack([self._best_indexed(key) for key in keys.float()])

    def _best_indexed(self, key: torch.Tensor) -> torch.Tensor:
        index, k = self.rows.index, self.rows.index.cfg.k
        while k <= MAX_K:
            _, rows = index.near(key[None], k)
            rows = rows[0][(rows[0] >= 0) & (rows[0] < self.n)]
            rows = rows[self.rows.removed_at[rows] > self.version]
            if len(rows):
                return (self.rows.keys[rows] @ key).max()
            k *= 4
        return (self.keys @ key).masked_fill(~self.alive(), float("-inf")).max()


MAX_K = 4096  # candidates past which one request's selection scans every row instead


def codebook_state(book: Codebook) -> tuple[dict[str, torch.Tensor], dict]:
    """A codebook version as tensors and JSON (a snapshot's): its rows up to n, the deltas of its edits (whole ones
    with their factors, definitions without: their keys are rows)."""
    rows, n = book.rows, book.n
    tensors = {"keys": rows.keys[:n].contiguous(), "radius": rows.radius[:n].contiguous(),
               "removed_at": rows.removed_at[:n].masked_fill(rows.removed_at[:n] > book.version, NEVER).contiguous()}
    if rows.rel_keys is not None:
        tensors["rel_keys"] = rows.rel_keys[:n].contiguous()
    if rows.index is not None and rows.index.n == n:  # a newer version's rows would be in the graph too
        tensors.update({f"index/{name}": t for name, t in rows.index.state().items()})
    metas, whole = {}, []
    for e, first in rows.first_row.items():
        if first < n:
            d = rows.deltas[e]
            metas[e] = d.meta
            if d.factors:
                whole.append(e)
                for name, (left, right) in d.factors.items():
                    tensors[f"whole/{e}/{name}/left"], tensors[f"whole/{e}/{name}/right"] = left, right
    info = {"n": n, "version": book.version, "live": book.live, "owner": rows.owner[:n],
            "targets": rows.targets[:n], "word_end": rows.word_end[:n],
            "words_of": [sorted(w) for w in rows.words_of[:n]], "first_row": {e: r for e, r in rows.first_row.items()
                                                                               if r < n},
            "metas": metas, "whole": whole}
    return tensors, info


def codebook_from_state(tensors: dict[str, torch.Tensor], info: dict, empty: Codebook) -> Codebook:
    """The version `codebook_state` wrote, on the checks, store and index settings of `empty` (which must be those
    it was made with: relation keys and rare words are read, not recomputed; so is the index's graph)."""
    rows, n = _Rows(empty.rows.keys.shape[1], empty.relation, empty.words, empty.store, empty.rows.index_cfg), \
        info["n"]
    rows.n, rows.version = n, info["version"]
    rows.keys, rows.radius, rows.removed_at = tensors["keys"], tensors["radius"], tensors["removed_at"]
    rows.rel_keys = tensors.get("rel_keys") if empty.relation is not None else None
    rows.owner, rows.targets, rows.word_end = list(info["owner"]), list(info["targets"]), list(info["word_end"])
    rows.words_of = [frozenset(w) for w in info["words_of"]]
    rows.first_row = dict(info["first_row"])
    whole: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {e: {} for e in info["whole"]}
    for key in tensors:
        if key.startswith("whole/") and key.endswith("/left"):
            _, e, name, _ = key.split("/")
            whole[e][name] = (tensors[key], tensors[f"whole/{e}/{name}/right"])
    for e in rows.first_row:
        rows.deltas[e] = LowRankDelta(whole[e], info["metas"][e], rows.keys[rows.span(e)].clone()) if e in whole \
            else keyless(LowRankDelta({}, info["metas"][e]))
    cfg = rows.index_cfg
    if cfg is not None and n >= cfg.min_rows:
        graph = {k.split("/", 1)[1]: t for k, t in tensors.items() if k.startswith("index/")}
        if graph:
            rows.index = KeyIndex.from_state(rows.keys, rows.words_of, graph, cfg)
        else:
            rows.index = KeyIndex(rows.keys.shape[1], cfg)
            rows.index.add(rows.keys, rows.words_of)
    return Codebook(rows, n, info["version"], info["live"])


def keyless(delta: LowRankDelta) -> LowRankDelta:
    """A definition as a codebook holds it: its key is its rows (2.3 KB an edit on SmolLM2, not held twice)."""
    return LowRankDelta({}, delta.meta) if is_definition(delta) else delta


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
    ends = meta.row_word_end(len(delta.key))
    return [{form: LowRankDelta(flat[i * len(forms) + j], {WORD_END: "1"} if ends[i] else {})
             for j, form in enumerate(forms)} for i in range(len(delta.key))]


WORD_END = "word_end"  # a piece's meta: its row's delta says the token that ends the answer's word
