"""Can an approximate index answer the codebook's selection (issue 31, item 2)? On the keys bench.million cached
(SmolLM2, N real then generated questions, each a stored edit with its bank radius), every request prompt of the
first R dev records per set (edit prompt, two rephrases, a locality prompt) is selected by the exact scan
(`Codebook.nearest`) and by: faiss top-k candidates (HNSW, or a flat inner-product scan for reference), then the
codebook's own rules (radius, relation check, word check, newest on ties) on those candidates only. Prints the
share of requests whose selection equals the exact scan's, and the time per request of each.

    python -m bench.million --points 100000 --threads 1      # computes and caches the keys first
    python research/experiments/key_index.py 100000 100
"""
import statistics
import sys
import time

import faiss
import torch
from safetensors.torch import load_file

from bench.common import ROOT
from bench.million import definition, fill
from editor_core import load_base_model
from editor_core.data import load_records
from editor_core.scope import Scope
from editor_core.scope.codebook import words_of

N, R = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
model, tok = load_base_model()
scope = Scope.load(ROOT / "weights" / "smollm2", [])
cache = ROOT / "bench" / "out" / "full" / "million" / "keys_smollm2"
keys = torch.cat([load_file(p)["keys"] for p in sorted(cache.glob("keys_*.safetensors"))])[:N]
questions = fill(N)
radii = scope.radii(keys)
book = scope.empty()
for i in range(N):
    book = book.added(f"e{i}", definition(keys[i], *questions[i], radii[i]))

asked = []
for kind in ("zsre", "counterfact"):
    for r in load_records(f"{kind}:{ROOT.parent}/shared/data/{kind}/dev.json", R, one_per_subject=True):
        asked += [r.edit.prompt, *r.rephrases[:2], *[q.prompt for q in r.loc[:1]]]
qkeys = torch.stack([scope.request_keys(model, tok, [a], book)[0] for a in asked])


def among(q: torch.Tensor, text: str, rows: list[int]) -> int | None:
    """The codebook's rule on candidate rows only (Codebook.nearest restricted to `rows`)."""
    rows = sorted(r for r in rows if 0 <= r < book.n)
    if not rows:
        return None
    idx = torch.tensor(rows)
    sim = (book.keys[idx] @ q.float())
    limit = book.rows.radius[idx].clamp(min=scope.cfg.radius).clone()
    asked_words = words_of(text)
    for j, r in enumerate(rows):
        if book.words is not None and sim[j] >= book.words.radius and sim[j] < limit[j] and \
                book.rows.words_of[r] and book.rows.words_of[r] <= asked_words:
            limit[j] = book.words.radius
    ok = (sim >= limit) & book.alive()[idx]
    if book.relation is not None:
        ok &= (book.rows.rel_keys[idx] @ book.relation.keys(q[None])[0]) >= book.relation.radius
    best = None
    for j in range(len(rows) - 1, -1, -1):  # newest first: ties go to the newest
        if ok[j] and (best is None or sim[j] > sim[best]):
            best = j
    return None if best is None else rows[best]


t0 = time.perf_counter()
exact = [book.nearest(q[None], scope.cfg.radius, [a])[0] for q, a in zip(qkeys, asked)]
exact_ms = (time.perf_counter() - t0) * 1000 / len(asked)
print(f"{N} keys, {len(asked)} requests; exact scan {exact_ms:.2f} ms/request; "
      f"{sum(e is not None for e in exact) / len(asked):.3f} select an edit")

data = keys.float().numpy()
indexes = {"flat": faiss.IndexFlatIP(data.shape[1])}
for m in (32,):
    hnsw = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    indexes[f"hnsw{m}"] = hnsw
for name, index in indexes.items():
    t0 = time.perf_counter()
    index.add(data)
    build_s = time.perf_counter() - t0
    for k in (16, 64, 256):
        for ef in ((64, 128, 256) if name.startswith("hnsw") else (None,)):
            if ef is not None:
                index.hnsw.efSearch = max(ef, k)
            times, same = [], 0
            for q, a, e in zip(qkeys, asked, exact):
                t0 = time.perf_counter()
                _, rows = index.search(q.float().numpy()[None], k)
                got = among(q, a, rows[0].tolist())
                times.append((time.perf_counter() - t0) * 1000)
                same += got == e
            print(f"{name:7s} build {build_s:6.1f} s  k {k:3d} ef {ef}  same {same / len(asked):.4f}  "
                  f"p50 {statistics.median(times):.2f} ms")
