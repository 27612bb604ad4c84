"""Where a stored edit's pieces come from: a scoped edit is logged as what defines it (its requests, key, radius,
words, steps and a digest of its factors), and its factors are derived state, kept in a bounded cache and
recomputed from that definition when they are needed and not held.

An edit's computation is deterministic at a given thread count on a given machine, so a recomputed delta is the
edit-time one bit for bit: the digest says so, and a recomputation that differs (another CPU) is served anyway
and counted. Deltas logged whole (logs written before definitions) keep their factors and are never recomputed.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..delta import LowRankDelta

log = logging.getLogger(__name__)

DIGEST = "factors_sha256"  # meta entry of a definition: the digest of the factors it was logged without
LAZY = ""  # DIGEST of a definition whose factors were never computed (imported): computed at first selection
THREADS = "compute_threads"  # meta entry: the torch thread count its factors were computed with

Pieces = list[dict[str, LowRankDelta]]  # per key row, what it applies by form (`codebook.pieces`)


def factors_digest(delta: LowRankDelta) -> str:
    h = hashlib.sha256()
    for name in sorted(delta.factors):
        for f in delta.factors[name]:
            h.update(name.encode())
            h.update(str(f.dtype).encode())
            h.update(f.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def is_definition(delta: LowRankDelta) -> bool:
    """Logged without its factors: they are to be recomputed."""
    return not delta.factors and DIGEST in delta.meta


def is_lazy(delta: LowRankDelta) -> bool:
    """A definition whose factors are computed first when it is selected: what it says beyond its key and answer
    (its word end) is known only then."""
    return is_definition(delta) and delta.meta[DIGEST] == LAZY


@dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0  # a definition's factors were not held: recomputed
    mismatches: int = 0  # a recomputation whose digest differs from the logged one
    nonfinite: int = 0  # an imported edit whose first computation was not finite: it applies nothing
    recompute_s: float = 0.0  # total time spent recomputing


class PieceStore:
    """Edit id -> its pieces, least recently used first, bounded by their bytes (`max_bytes`; 0: unbounded).
    Shared by every codebook version: an edit's pieces depend on its definition alone, which never changes.
    `recompute(definition) -> LowRankDelta` makes the factors of a definition; without it a definition that is
    not held cannot be served."""

    def __init__(self, max_bytes: int = 0, recompute: Callable[[LowRankDelta], LowRankDelta] | None = None,
                 split: Callable[[LowRankDelta], Pieces] | None = None) -> None:
        self.max_bytes, self.recompute, self.split = max_bytes, recompute, split
        self.stats = StoreStats()
        self._held: OrderedDict[str, tuple[Pieces, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # guards the dict; recomputation runs outside it
        self._computing = threading.Lock()  # one recomputation at a time: it takes the cores anyway

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._held)

    def put(self, edit_id: str, delta: LowRankDelta) -> None:
        """Hold the pieces of a whole delta (just computed, or logged whole)."""
        self._keep(edit_id, self.split(delta), delta.nbytes)

    def forget(self, edit_id: str) -> None:
        with self._lock:
            held = self._held.pop(edit_id, None)
            if held is not None:
                self._bytes -= held[1]

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
            self._bytes = 0

    def pieces(self, edit_id: str, delta: LowRankDelta) -> Pieces:
        """The pieces of stored edit `edit_id`, whose logged delta is `delta` (whole, or a definition)."""
        with self._lock:
            held = self._held.get(edit_id)
            if held is not None:
                self._held.move_to_end(edit_id)
                self.stats.hits += 1
                return held[0]
        if not is_definition(delta):
            return self.split(delta)  # logged whole: its factors are at hand, splitting them is cheap
        with self._computing:
            with self._lock:  # computed by a request that held the work lock before this one
                held = self._held.get(edit_id)
                if held is not None:
                    return held[0]
            if self.recompute is None:
                raise RuntimeError(f"edit {edit_id} is stored as a definition and nothing can recompute it")
            t0 = time.perf_counter()
            whole = self.recompute(delta)
            self.stats.misses += 1
            self.stats.recompute_s += time.perf_counter() - t0
            if delta.meta[DIGEST] != LAZY and factors_digest(whole) != delta.meta[DIGEST]:
                self.stats.mismatches += 1
                log.warning("edit %s recomputed with other factors than it was logged with (another CPU or "
                            "thread count?): serving the recomputed ones", edit_id)
            pieces = self.split(whole)
            if delta.meta[DIGEST] == LAZY and not whole.finite():
                # /edit refuses such a delta before it is logged; an imported one is first computed here, inside
                # someone's request: it applies nothing rather than put NaN into a shared batch.
                self.stats.nonfinite += 1
                log.warning("imported edit %s computed to non-finite factors: it applies nothing", edit_id)
                pieces = [{form: LowRankDelta({}, p.meta) for form, p in row.items()} for row in pieces]
            self._keep(edit_id, pieces, whole.nbytes)
            return pieces

    def _keep(self, edit_id: str, pieces: Pieces, nbytes: int) -> None:
        with self._lock:
            old = self._held.pop(edit_id, None)
            if old is not None:
                self._bytes -= old[1]
            self._held[edit_id] = (pieces, nbytes)
            self._bytes += nbytes
            while self.max_bytes and self._bytes > self.max_bytes and len(self._held) > 1:
                _, (_, n) = self._held.popitem(last=False)
                self._bytes -= n
