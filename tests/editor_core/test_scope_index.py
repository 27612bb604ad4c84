"""Selection through the key index (faiss HNSW candidates + rows by rare word) chooses what the exact scan chooses:
by key, by words far below the radius, with the relation check, removed edits, ties to the newest, older versions,
and a codebook read back from its state with its graph."""
import random

import torch

from editor_core import LowRankDelta
from editor_core.scope import (
    Codebook,
    IndexConfig,
    RelationCheck,
    ScopedMeta,
    WordCheck,
    codebook_from_state,
    codebook_state,
)

D, RADIUS = 32, 0.75
RELATION = RelationCheck(torch.randn(8, D, generator=torch.Generator().manual_seed(3)), 0.2)
WORDS = WordCheck(frozenset({"the", "of", "in"}), 0.3)
INDEXED = IndexConfig(min_rows=400, k=4)  # small k: the widening is exercised too


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def world(n: int = 2000, seed: int = 0):
    """Edits clustered around 150 "subjects", each asked by a prompt of three rare words, some edited twice with
    the same key; a fifth of them rolled back."""
    rnd, g = random.Random(seed), torch.Generator().manual_seed(seed)
    centers = unit(torch.randn(150, D, generator=g))
    keys = unit(centers[torch.randint(0, 150, (n,), generator=g)] + 0.35 * torch.randn(n, D, generator=g) / D**0.5)
    vocab = [f"w{i}" for i in range(300)]
    prompts = [" ".join(rnd.sample(vocab, 3)) + " of the" for _ in range(n)]
    edits = []
    for i in range(n):
        j = i - 1 if i and rnd.random() < 0.05 else i  # the same question edited again: equal keys, newest wins
        meta = ScopedMeta(prompts=(prompts[j],), targets=(f"t{i}",), radii=(round(0.7 + 0.2 * rnd.random(), 6),))
        edits.append((f"e{i}", LowRankDelta({}, meta.written(), keys[j][None].clone())))
    # A third name a stored question's words and lie far from its key (selected by words or not at all).
    asked = torch.randint(0, n, (600,), generator=g)
    noise = torch.tensor([3.0 if b % 3 == 0 else 1.2 for b in range(600)])[:, None]
    queries = unit(keys[asked] + noise * torch.randn(600, D, generator=g) / D**0.5)
    texts = [prompts[int(asked[b])] + " now" if b % 3 == 0 else " ".join(rnd.sample(vocab, 5)) for b in range(600)]
    return rnd, edits, queries, texts


def fill(index: IndexConfig | None, edits, rnd: random.Random) -> list[Codebook]:
    book, versions = Codebook.empty(D, RELATION, WORDS, None, index), []
    for i, (e, delta) in enumerate(edits):
        book = book.added(e, delta)
        if i % 5 == 4:
            book = book.without(edits[rnd.randrange(i - 3, i)][0]) if book.live > 1 and \
                edits[i - 3][0] in book.deltas else book
        versions.append(book)
    return versions


def owners(book: Codebook, rows: list[int | None]) -> list[str | None]:
    return [None if r is None else book.owner(r) for r in rows]


def test_the_index_selects_what_the_exact_scan_selects():
    rnd, edits, queries, texts = world()
    scanned = fill(None, edits, random.Random(7))
    indexed = fill(INDEXED, edits, random.Random(7))
    exact, book = scanned[-1], indexed[-1]
    assert exact.rows.index is None and book.rows.index is not None and book.rows.index.n == book.n
    want = exact.nearest(queries, RADIUS, texts)
    got = book.nearest(queries, RADIUS, texts)
    assert got == want
    sims = (queries @ exact.keys.T)
    by_words = [b for b, r in enumerate(want) if r is not None and sims[b, r] < RADIUS]
    assert len(by_words) >= 20 and sum(r is not None for r in want) - len(by_words) >= 20  # both ways in
    assert torch.allclose(book.best_sim(queries), exact.best_sim(queries), atol=1e-5)
    # An older version of the indexed line reads only its own rows.
    assert indexed[1200].nearest(queries, RADIUS, texts) == scanned[1200].nearest(queries, RADIUS, texts)


def test_a_codebook_read_back_from_its_state_keeps_its_graph_and_grows_it():
    rnd, edits, queries, texts = world(seed=1)
    book = fill(INDEXED, edits, rnd)[-1]
    tensors, info = codebook_state(book)
    assert "index/neighbors" in tensors
    back = codebook_from_state(tensors, info, Codebook.empty(D, RELATION, WORDS, None, INDEXED))
    assert back.rows.index is not None and back.rows.index.n == book.n
    assert back.nearest(queries, RADIUS, texts) == book.nearest(queries, RADIUS, texts)
    new = LowRankDelta({}, ScopedMeta(prompts=("w1 w2 w3",), targets=("x",)).written(), queries[:1].clone())
    grown, exact = back.added("new", new), Codebook.empty(D, RELATION, WORDS)
    for e, d in book.deltas.items():
        exact = exact.added(e, d)
    exact = exact.added("new", new)
    assert owners(grown, grown.nearest(queries, RADIUS, texts)) == owners(exact, exact.nearest(queries, RADIUS, texts))
    assert grown.owner(grown.nearest(queries[:1], RADIUS, ["w1 w2 w3"])[0]) == "new"


def test_below_its_threshold_a_codebook_scans():
    _, edits, _, _ = world(n=300)
    book = fill(INDEXED, edits, random.Random(0))[-1]
    assert book.rows.index is None


def test_the_newest_of_many_equal_keys_wins_past_the_first_candidates():
    # The same question edited 30 times: 30 equal keys, more than the first k=4 candidates hold.
    g = torch.Generator().manual_seed(4)
    others = unit(torch.randn(600, D, generator=g))
    key = unit(torch.randn(1, D, generator=g))
    scan, book = Codebook.empty(D), Codebook.empty(D, index=IndexConfig(min_rows=100, k=4))
    for i in range(600):
        d = LowRankDelta({}, ScopedMeta(targets=(f"o{i}",)).written(), others[i : i + 1].clone())
        scan, book = scan.added(f"o{i}", d), book.added(f"o{i}", d)
    for i in range(30):
        d = LowRankDelta({}, ScopedMeta(targets=(f"t{i}",)).written(), key.clone())
        scan, book = scan.added(f"t{i}", d), book.added(f"t{i}", d)
    assert book.rows.index is not None
    assert owners(book, book.nearest(key, RADIUS)) == owners(scan, scan.nearest(key, RADIUS)) == ["t29"]
