"""Why CounterFact paraphrases miss a scoped edit they select, and which step rule fixes it, on training records
(Runs at commit 6378ff3, the code it was measured on: it overrides Scope's private step methods, whose signatures
changed since; `git worktree add /tmp/x 6378ff3` to rerun it.)
(never a dev split). Per record: one scoped edit, then greedy replies (12 tokens, plain prompts) to the edit
prompt, its two paraphrases and two neighbours; `says` as in editor_core.fluency, `selected` whether the
paraphrase's key picks the edit, `unchanged` whether a neighbour's reply is the unedited one.

Variants of the step rule (ScopeConfig.scale / max_scale, and which prompts must give the target):
  shipped   the shipped scope: doubled from 2 up to 8 until the edit prompt gives its target
  x2        doubled from 4 up to 16
  prefixed  as shipped, but the target must also follow the prompt behind an unrelated sentence
  augmented as shipped, but the plain piece is the mean of MEND's deltas for the prompt and for the prompt behind
            each unrelated sentence

Usage: python research/experiments/paraphrase_step.py [N] [VARIANT ...]   (from the repo root; default 60, all)

Measured (60 CounterFact train records, 2026-12-02, on a CPU shared with other jobs):
  shipped  prompt 0.950  paraphrase 0.650  selected 0.867  paraphrase|selected 0.750  unchanged 0.958  step 2.1
  x2       prompt 0.917  paraphrase 0.700  selected 0.867  paraphrase|selected 0.808  unchanged 0.958  step 4.9
A doubled step reaches 6 more of 120 paraphrases and loses 2 of 60 edit prompts: within noise at this size, and not
adopted. `prefixed` and `augmented` were not run to the end (the first session ran out; the next one's run of
`prefixed` stopped on a batch of chat forms only, fixed since, and gave its CPU to 500-record bench/says.py runs).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time

import torch

from editor_core import MENDEditor, load_base_model
from editor_core.data import EditRequest, load_records
from editor_core.evaluate import local_generate, scoped_mend_method
from editor_core.fluency import says
from editor_core.delta import LowRankDelta
from editor_core.scope import Scope, forms_of, in_forms

torch.set_num_threads(2)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 60
variants = sys.argv[2:] or ["shipped", "x2", "prefixed"]
TOKENS = 12
# Stand-ins for the unrelated sentence a CounterFact paraphrase opens with (none is from the data).
FILLERS = ["The weather was mild that year.", "It was first published in 1998."]

model, tok = load_base_model()
editor = MENDEditor.load("weights/smollm2", model)
shipped = Scope.load("weights/smollm2", editor.layers)
recs = load_records("counterfact:../shared/data/counterfact/train.json", None, one_per_subject=True)[-n:]


def single(gen):
    return lambda prompt, question, tokens: gen([(prompt, question, tokens)])[0]


plain = single(local_generate(model, tok))
ref = [[plain(q.prompt, None, TOKENS) for q in r.loc[:2]] for r in recs]


def prefixed_takes(orig):
    def takes(model, tok, deltas, requests):
        own = orig(model, tok, deltas, requests)
        plain_rows = [i for i, r in enumerate(requests) if not r.prompt.startswith("<|im_start|>")]
        ok = list(own)
        if not plain_rows:  # only chat forms are still short of their target
            return ok
        for filler in FILLERS:
            more = orig(model, tok, [deltas[i] for i in plain_rows],
                        [EditRequest(f"{filler} {requests[i].prompt}", requests[i].target) for i in plain_rows])
            for i, m in zip(plain_rows, more):
                ok[i] = ok[i] and m
        return ok
    return takes


for variant in variants:
    cfg = shipped.cfg
    if variant == "x2":
        cfg = dataclasses.replace(cfg, scale=cfg.scale * 2, max_scale=cfg.max_scale * 2)
    scope = Scope(cfg, editor.layers, shipped.center, shipped.proj)
    if variant == "prefixed":
        scope._takes = prefixed_takes(scope._takes)
    method = scoped_mend_method(model, tok, editor, scope)
    if variant == "augmented":
        def method(recs, scope=scope):
            (r,) = recs
            forms = in_forms(tok, [r.edit])  # plain, chat
            prefixed = [EditRequest(f"{f} {r.edit.prompt}", r.edit.target) for f in FILLERS]
            deltas = editor.compute_deltas(model, tok, forms + prefixed)
            mean = LowRankDelta.stack([deltas[0]] + deltas[2:])
            w = 1 / (1 + len(prefixed))
            mean = LowRankDelta({n: (a * w, b) for n, (a, b) in mean.factors.items()})
            return scope.scoped(model, tok, [mean, deltas[1]], forms, [r.edit.prompt], forms_of(tok))
    gen = single(local_generate(model, tok, scope))
    rows, t0 = [], time.time()
    scope.attach(model)
    try:
        for r, before in zip(recs, ref):
            scope.add("e", method([r]))
            para = r.rephrases[:2]
            picked = scope.select(scope.request_keys(model, tok, para))
            rows.append({
                "prompt": float(says(gen(r.edit.prompt, None, TOKENS), r.edit.target)),
                "paraphrase": statistics.mean(says(gen(p, None, TOKENS), r.edit.target) for p in para),
                "selected": statistics.mean(x is not None for x in picked),
                "says_when_selected": [says(gen(p, None, TOKENS), r.edit.target) for p, x in zip(para, picked) if x],
                "unchanged": statistics.mean(gen(q.prompt, None, TOKENS) == b for q, b in zip(r.loc[:2], before)),
                "step": json.loads(scope.codebook.deltas["e"].meta["scope_scale"])[0],
            })
            scope.clear()
    finally:
        scope.detach()
    sel = [s for row in rows for s in row.pop("says_when_selected")]
    out = {k: round(statistics.mean(row[k] for row in rows), 3) for k in rows[0]}
    print(json.dumps({"variant": variant, "n": len(rows), **out,
                      "paraphrase_given_selected": round(statistics.mean(sel), 3) if sel else None,
                      "s": round(time.time() - t0)}), flush=True)
