"""Codebook versions over shared append-only rows: adding an edit appends, removing one stamps its rows, every
older version still answers as it did, and any version selects exactly what a codebook built afresh from its live
edits selects."""
import random

import torch

from editor_core import LowRankDelta
from editor_core.scope import Codebook, ScopedMeta


def edit(key: torch.Tensor, radius: float | None = None) -> LowRankDelta:
    meta = ScopedMeta(radii=None if radius is None else (radius,), targets=("t",)).written()
    return LowRankDelta({}, meta, key[None] / key.norm())


def test_versions_share_rows_and_each_keeps_its_answers():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(3, 16, generator=g)
    v0 = Codebook.empty(16)
    v2 = v0.added("a", edit(keys[0])).added("b", edit(keys[1]))
    v3 = v2.without("a")
    v4 = v3.added("c", edit(keys[2]))
    q = keys / keys.norm(dim=1, keepdim=True)
    assert [v2.owner(r) if r is not None else None for r in v2.nearest(q, 0.99)] == ["a", "b", None]
    assert [v4.owner(r) if r is not None else None for r in v4.nearest(q, 0.99)] == [None, "b", "c"]
    assert v3.nearest(q, 0.99)[0] is None and v2.nearest(q, 0.99)[0] == 0  # the older version still has it
    assert v4.rows is v2.rows and (v2.live, v3.live, v4.live) == (2, 1, 2)
    assert list(v4.deltas) == ["b", "c"] and list(v2.deltas) == ["a", "b"]
    fork = v2.added("d", edit(keys[2]))  # added to an older version: a line of its own
    assert fork.rows is not v4.rows and list(fork.deltas) == ["a", "b", "d"] and list(v4.deltas) == ["b", "c"]
    aside = v4.beside("cand", edit(keys[0]))
    assert aside.rows is not v4.rows and v4.rows.n == 3


def test_appending_copies_no_row_until_the_capacity_doubles():
    book = Codebook.empty(8)
    ptrs, caps = set(), []
    for i in range(100):
        book = book.added(str(i), edit(torch.randn(8)))
        ptrs.add(book.rows.keys.data_ptr())
        caps.append(len(book.rows.keys))
    assert sorted(set(caps)) == [16, 32, 64, 128] and len(ptrs) == 4


def test_any_version_selects_what_a_fresh_codebook_of_its_live_edits_selects():
    rnd, g = random.Random(1), torch.Generator().manual_seed(1)
    base = torch.randn(40, 32, generator=g)  # 40 "subjects": edits and queries cluster around them
    book, live = Codebook.empty(32), {}
    for i in range(300):
        if live and rnd.random() < 0.2:
            gone = rnd.sample(sorted(live), k=min(len(live), rnd.randint(1, 3)))
            book = book.without(*gone)
            for e in gone:
                del live[e]
        key = base[rnd.randrange(40)] + 0.3 * torch.randn(32, generator=g)
        live[f"e{i}"] = edit(key, rnd.choice([None, 0.8, 0.9]))
        book = book.added(f"e{i}", live[f"e{i}"])
    fresh = Codebook.empty(32)
    for e, d in live.items():
        fresh = fresh.added(e, d)
    queries = base[torch.randint(0, 40, (500,), generator=g)] + 0.3 * torch.randn(500, 32, generator=g)
    queries = queries / queries.norm(dim=1, keepdim=True)
    got = [None if r is None else book.owner(r) for r in book.nearest(queries, 0.7)]
    want = [None if r is None else fresh.owner(r) for r in fresh.nearest(queries, 0.7)]
    assert got == want and sum(x is not None for x in got) > 50
