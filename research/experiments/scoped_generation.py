"""Generation cost of scoped edits, in process: 32 greedy tokens for 16 prompts (8 select an edit, 8 do not), the
base model vs 1,000 stored scoped edits. Run from the repo root: python research/experiments/scoped_generation.py"""
import contextlib
import time

import torch

from _keys import keys_for
from editor_core import MENDEditor, load_base_model, LowRankDelta
from editor_core.scope import Scope
from editor_core.data import load_records
torch.set_num_threads(1)
m, t = load_base_model()
ed = MENDEditor.load("weights/smollm2", m)
scope = Scope.load("weights/smollm2", ed.layers)
recs = load_records("zsre:../shared/data/zsre/dev.json", 1000, one_per_subject=True)
prompts = [r.edit.prompt for r in recs[:8]] + [q.prompt for r in recs[:8] for q in r.loc[:1]]
params = dict(m.named_parameters())
keys = scope.prompt_keys(m, t, [r.edit.prompt for r in recs])
torch.manual_seed(0)
for i, r in enumerate(recs):  # rank-8 stand-ins with the real keys: what matters is selection and the hook
    f = {n: (torch.randn(params[n].shape[0], 8).half() * 1e-3, torch.randn(8, params[n].shape[1]).half() * 1e-3) for n in [l.name for l in ed.layers]}
    scope.add(str(i), LowRankDelta(f, key=keys[i:i+1]))
def run(scoped):
    t0 = time.perf_counter(); n = 0
    for q in prompts:
        ids = t(q, return_tensors="pt")["input_ids"]
        if scoped:
            scope.attach(m)
            ctx = scope.applying(keys_for(scope, m, ids, torch.ones_like(ids)))
        else:
            ctx = contextlib.nullcontext()
        with ctx, torch.no_grad():
            out = m.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
        if scoped: scope.detach()
        n += out.shape[1] - ids.shape[1]
    return n / (time.perf_counter() - t0)
for rnd in range(2):
    b = run(False); s = run(True)
    print(f"round {rnd}: base {b:.1f} tok/s, 1,000 scoped edits {s:.1f} tok/s, ratio {s/b:.3f}", flush=True)
