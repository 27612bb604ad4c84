"""Choosing ScopeConfig.max_scale on training records: scoped single edits at a fixed step vs a step doubled until
the edit's own prompt gives its target. Never touches a dev split.

Usage: python research/experiments/scoped_step.py [N_PER_SET]   (from the repo root; default 100 records per set)
"""
from __future__ import annotations

import dataclasses
import json
import sys

import torch

from editor_core import MENDEditor, load_base_model
from editor_core.data import load_records
from editor_core.evaluate import evaluate, mend_method
from editor_core.scope import Scope

torch.set_num_threads(1)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
model, tok = load_base_model()
editor = MENDEditor.load("weights/smollm2", model)
shipped = Scope.load("weights/smollm2", editor.layers)
names = [l.name for l in editor.layers]
sets = {kind: load_records(f"{kind}:../shared/data/{kind}/train.json", None, one_per_subject=True)[-n:]
        for kind in ("zsre", "counterfact")}  # the end of the files: the scope's radius table used the start
for scale, max_scale in [(2.0, 0.0), (2.0, 8.0), (1.0, 8.0), (2.0, 16.0)]:
    scope = Scope(dataclasses.replace(shipped.cfg, scale=scale, max_scale=max_scale), editor.layers, shipped.center)
    for kind, recs in sets.items():
        s = evaluate(model, tok, recs, mend_method(model, tok, editor), names, scope=scope)["summary"]
        keys = ["edit", "rephrase", "loc"] + (["efficacy", "paraphrase", "neighborhood"] if kind == "counterfact" else [])
        print(json.dumps({"scale": scale, "max_scale": max_scale, "set": kind, "n": len(recs),
                          **{k: round(s[k], 3) for k in keys}, "latency_ms_p50": round(s["latency_ms_p50"], 1)}),
              flush=True)
