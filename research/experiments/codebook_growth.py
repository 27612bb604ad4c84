"""What a stored edit costs the codebook's own operations, as the edits pile up: `Codebook.added` (each add
concatenates every stored key row) and `Codebook.nearest` for 4 prompt keys, with random unit keys of SmolLM2's
width, 2 key rows per edit (a plain and a chat piece), no model.

    python research/experiments/codebook_growth.py

Printed (2026-12-07, 2 cores shared with the test suite; ms per call, mean of 10):
    100 edits: added 0.08 ms, nearest(4) 0.19 ms
    1000 edits: added 2.12 ms, nearest(4) 0.39 ms
    5000 edits: added 11.62 ms, nearest(4) 3.41 ms
    10000 edits: added 27.22 ms, nearest(4) 9.16 ms
"""
import time

import torch

from editor_core.delta import LowRankDelta
from editor_core.scope import Codebook

torch.set_num_threads(1)
DIM, ROWS, AT = 576, 2, (100, 1000, 5000, 10000)
factors = {"w": (torch.zeros(10, 2), torch.zeros(2, 10))}
book = Codebook.empty(DIM)
for i in range(1, AT[-1] + 1):
    key = torch.nn.functional.normalize(torch.randn(ROWS, DIM), dim=1)
    book = book.added(f"e{i}", LowRankDelta(factors, {}, key))
    if i in AT:
        t0 = time.perf_counter()
        for _ in range(10):
            book.added("x", LowRankDelta(factors, {}, key))
        t1 = time.perf_counter()
        asked = torch.nn.functional.normalize(torch.randn(4, DIM), dim=1)
        for _ in range(10):
            book.nearest(asked, 0.6)
        t2 = time.perf_counter()
        print(f"{i} edits: added {(t1 - t0) * 100:.2f} ms, nearest(4) {(t2 - t1) * 100:.2f} ms")
