"""Does the key index keep the exact scan's selections when its graph stores the keys in fp16 (half its memory: the
graph holds its own copy of every key)? On bench.million's cached keys, the product's codebook with its index
(editor_core/scope/index.py) against the same with faiss's HNSW over fp16 codes, both checked against the scan.

    python -m bench.million --points 100000 --threads 1      # caches the keys first
    python research/experiments/index_storage.py 100000 100
"""
import sys
import time

import faiss
import numpy as np
import torch
from safetensors.torch import load_file

from bench.common import ROOT
from bench.million import definition, fill, requests
from editor_core import load_base_model
from editor_core.scope import IndexConfig, KeyIndex, Scope

N, R = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
model, tok = load_base_model()
cache = ROOT / "bench" / "out" / "full" / "million" / "keys_smollm2"
keys = torch.cat([load_file(p)["keys"] for p in sorted(cache.glob("keys_*.safetensors"))])[:N]
questions = fill(N)
asked = requests(R)


class Fp16Index(KeyIndex):
    def __init__(self, dim: int, cfg: IndexConfig) -> None:
        super().__init__(dim, cfg)
        self.graph = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, cfg.m, faiss.METRIC_INNER_PRODUCT)
        self.graph.hnsw.efConstruction = cfg.ef_construction
        self.graph.hnsw.efSearch = cfg.ef_search

    def add(self, keys: torch.Tensor, words) -> None:
        first = self.n
        with self._lock:
            if not self.graph.is_trained:
                self.graph.train(np.ascontiguousarray(keys.float().numpy()))
            self.graph.add(np.ascontiguousarray(keys.float().numpy()))
            for r, ws in enumerate(words, first):
                self._file(r, ws)


for name, cls in (("flat", KeyIndex), ("fp16", Fp16Index)):
    import editor_core.scope.codebook as cb

    cb.KeyIndex = cls
    scope = Scope.load(ROOT / "weights" / "smollm2", [])
    radii = scope.radii(keys)
    t0 = time.perf_counter()
    book = scope.empty()
    for i in range(N):
        book = book.added(f"e{i}", definition(keys[i], *questions[i], radii[i]))
    build = time.perf_counter() - t0
    qkeys = [scope.request_keys(model, tok, [a])[0] for a in asked]
    same, ms = 0, []
    for q, a in zip(qkeys, asked):
        t = time.perf_counter()
        got = book.nearest(q[None], scope.cfg.radius, [a])
        ms.append((time.perf_counter() - t) * 1000)
        same += got == book.nearest(q[None], scope.cfg.radius, [a], exact=True)
    ms.sort()
    print(f"{name}: {N} keys, fill {build:.0f} s, {len(asked)} requests, same as the scan {same / len(asked):.4f}, "
          f"select p50 {ms[len(ms) // 2]:.2f} ms", flush=True)
