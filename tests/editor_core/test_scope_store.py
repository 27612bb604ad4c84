"""PieceStore: a scoped edit's factors held least recently used first within a byte bound, recomputed from the
logged definition when not held, and checked against the digest the definition carries."""
import threading

import torch

from editor_core import DIGEST, LowRankDelta, factors_digest
from editor_core.scope import PieceStore, is_definition, pieces


def whole(seed: int) -> LowRankDelta:
    g = torch.Generator().manual_seed(seed)
    return LowRankDelta({"w": (torch.randn(8, 2, generator=g), torch.randn(2, 8, generator=g))}, {},
                        torch.randn(1, 4, generator=g))


def definition(delta: LowRankDelta, digest: str | None = None) -> LowRankDelta:
    return LowRankDelta({}, {DIGEST: digest or factors_digest(delta)}, delta.key)


def test_definitions_are_recomputed_once_held_and_evicted_oldest_first():
    made = {i: whole(i) for i in range(3)}
    calls = []

    def recompute(d: LowRankDelta) -> LowRankDelta:
        i = next(i for i, w in made.items() if torch.equal(w.key, d.key))
        calls.append(i)
        return made[i]

    store = PieceStore(max_bytes=2 * made[0].nbytes, recompute=recompute, split=pieces)
    defs = {i: definition(w) for i, w in made.items()}
    assert all(is_definition(d) for d in defs.values()) and not is_definition(made[0])
    for i in (0, 1, 0, 2):
        (row,) = store.pieces(str(i), defs[i])
        assert torch.equal(row["plain"].factors["w"][0], made[i].factors["w"][0])
    assert calls == [0, 1, 2] and store.nbytes == 2 * made[0].nbytes  # 0 was held again; 1 was the oldest
    store.pieces("1", defs[1])
    assert calls == [0, 1, 2, 1] and store.stats.misses == 4 and store.stats.hits == 1
    assert store.stats.mismatches == 0


def test_a_recomputation_that_differs_from_the_digest_is_served_and_counted():
    store = PieceStore(recompute=lambda d: whole(1), split=pieces)
    (row,) = store.pieces("e", definition(whole(0)))
    assert torch.equal(row["plain"].factors["w"][1], whole(1).factors["w"][1]) and store.stats.mismatches == 1


def test_whole_deltas_are_never_recomputed_and_put_holds_a_fresh_edit():
    store = PieceStore(recompute=lambda d: (_ for _ in ()).throw(AssertionError("recomputed")), split=pieces)
    store.pieces("old", whole(0))  # logged whole: split, not recomputed
    store.put("new", whole(1))
    store.pieces("new", definition(whole(1)))
    assert store.stats.misses == 0 and store.stats.hits == 1


def test_concurrent_selections_of_one_edit_compute_it_once():
    gate, calls = threading.Event(), []

    def recompute(d: LowRankDelta) -> LowRankDelta:
        calls.append(1)
        gate.wait(5)
        return whole(0)

    store = PieceStore(recompute=recompute, split=pieces)
    threads = [threading.Thread(target=store.pieces, args=("e", definition(whole(0)))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_an_imported_edit_whose_first_computation_is_not_finite_applies_nothing():
    bad = whole(5)
    bad.factors["w"][0][0, 0] = float("nan")
    store = PieceStore(recompute=lambda d: bad, split=pieces)
    lazy = LowRankDelta({}, {DIGEST: ""}, bad.key)  # imported: no factors were ever computed to digest
    (row,) = store.pieces("imported", lazy)
    assert row["plain"].factors == {} and store.stats.nonfinite == 1 and store.stats.mismatches == 0
