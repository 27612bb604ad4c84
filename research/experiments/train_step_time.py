"""Seconds per training step (forward + backward of `edit_losses`) on SmolLM2 with the shipped editor.

Usage: python research/experiments/train_step_time.py [THREADS]
Batch 4, 3 locality prompts per edit, prefix cache warm (each batch is seen once before it is timed).
Run it at a commit before answer-position logits (29530bb) and after to compare.
"""
from __future__ import annotations

import random
import sys
import time

import torch

from editor_core.data import load_records
from editor_core.mend import MENDEditor
from editor_core.model import load_base_model
from editor_core.prefix_cache import PrefixCache
from editor_core.train import TrainConfig, edit_losses, sample_step

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
model, tok = load_base_model("smollm2")
records = (load_records("zsre:../shared/data/zsre/train.json", 200)
           + load_records("counterfact:../shared/data/counterfact/train.json", 200))
editor = MENDEditor.load("weights/smollm2", model)
cache = PrefixCache(model, min(l.block for l in editor.layers))
rng = random.Random(0)
batches = [sample_step(records, TrainConfig(batch_size=4, n_loc=3), rng) for _ in range(5)]
for b in batches:
    edit_losses(model, tok, editor, *b, cache, editor.cfg.max_length)
for b in batches:
    t0 = time.perf_counter()
    l_edit, l_loc, _ = edit_losses(model, tok, editor, *b, cache, editor.cfg.max_length)
    (l_edit + 5 * l_loc).backward()
    print(f"step {time.perf_counter() - t0:.2f} s")
