"""Where a request's key finds the edits it may select once many are stored: an HNSW graph over the key rows (faiss)
for the rows near it, and the rows by their rare words for those a prompt names. The codebook's own rules then
choose among these candidates only, as its exact scan chooses among all rows; below `min_rows` rows it scans.

A selection is either dense (cosine >= the row's radius, itself floored by the scope's: 0.63 on SmolLM2, close
neighbours, which the graph finds) or by words (cosine >= the word check's radius, 0.4: far from the key, where a
graph finds nothing reliably, but only for rows whose every rare word the prompt names, which `by_word` finds
exactly)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import faiss
import numpy as np
import torch


@dataclass(frozen=True)
class IndexConfig:
    min_rows: int = 20_000  # below this many key rows the exact scan costs about what the graph does
    m: int = 32  # graph neighbours per node (faiss's M)
    ef_construction: int = 80
    ef_search: int = 256  # candidates the search keeps: what makes it find the exact nearest
    k: int = 16  # dense candidates per request key; more where none of them can be selected


class KeyIndex:
    """The candidate rows of one line of codebooks (`_Rows`), appended to as it grows. Row ids are the line's
    row numbers; a version reads only those below its own count. faiss's graph is not safe to search while it is
    added to, so both hold one lock (an add is ~0.5 ms, a search ~2 ms)."""

    def __init__(self, dim: int, cfg: IndexConfig) -> None:
        self.cfg = cfg
        self.graph = faiss.IndexHNSWFlat(dim, cfg.m, faiss.METRIC_INNER_PRODUCT)
        self.graph.hnsw.efConstruction = cfg.ef_construction
        self.graph.hnsw.efSearch = cfg.ef_search
        # Each row under one of its rare words, the one with the fewest rows so far: a prompt that names all of a
        # row's words names that one, and no list grows with a common first name.
        self.by_word: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    @property
    def n(self) -> int:
        return self.graph.ntotal

    def add(self, keys: torch.Tensor, words: list[frozenset[str]]) -> None:
        """Rows n .. n + len(keys): their unit keys and rare words."""
        first = self.n
        with self._lock:
            self.graph.add(np.ascontiguousarray(keys.float().numpy()))
            for r, ws in enumerate(words, first):
                self._file(r, ws)

    def _file(self, row: int, words: frozenset[str]) -> None:
        if words:
            word = min(sorted(words), key=lambda w: len(self.by_word.get(w, ())))
            self.by_word.setdefault(word, []).append(row)

    def near(self, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) similarities and rows of each key's k nearest rows by the graph (row -1: fewer rows)."""
        with self._lock:
            sim, rows = self.graph.search(np.ascontiguousarray(keys.float().numpy()), k)
        return torch.from_numpy(sim), torch.from_numpy(rows)

    def named(self, words: frozenset[str]) -> list[int]:
        """Rows filed under a word of this prompt: every row whose rare words it names is among them."""
        return [r for w in words for r in self.by_word.get(w, ())]

    def state(self) -> dict[str, torch.Tensor]:
        """The graph as tensors (a snapshot's): rebuilding it costs minutes at 1M rows, reading it back seconds. The
        keys are not in it: they are the codebook's rows."""
        h = self.graph.hnsw
        arrays = {"levels": h.levels, "offsets": h.offsets, "neighbors": h.neighbors}
        # offsets are size_t: kept as int64, which every torch reads (and they are far below 2**63)
        out = {name: torch.from_numpy(faiss.vector_to_array(v).copy()) for name, v in arrays.items()
               if name != "offsets"}
        out["offsets"] = torch.from_numpy(faiss.vector_to_array(h.offsets).astype(np.int64))
        out["entry"] = torch.tensor([h.entry_point, h.max_level], dtype=torch.long)
        return out

    @classmethod
    def from_state(cls, keys: torch.Tensor, words: list[frozenset[str]], state: dict[str, torch.Tensor],
                   cfg: IndexConfig) -> KeyIndex:
        """The index `state` was taken of, over these rows (the same rows, in order)."""
        out = cls(keys.shape[1], cfg)
        h = out.graph.hnsw
        out.graph.storage.add(np.ascontiguousarray(keys.float().numpy()))
        out.graph.ntotal = len(keys)
        for name in ("levels", "offsets", "neighbors"):
            array = state[name].numpy()
            faiss.copy_array_to_vector(array.astype(np.uint64) if name == "offsets" else array, getattr(h, name))
        h.entry_point, h.max_level = (int(x) for x in state["entry"])
        for r, ws in enumerate(words):
            out._file(r, ws)
        return out
