"""CounterFact's metrics on the unedited model: the neighbourhood score that no edit at all would get.

Neighbourhood counts neighbour prompts where P(true) > P(new) (mean per-token NLL). A small model does not know
every true answer, so some neighbours fail with no edit; that share bounds what an editor can reach.
Usage: python research/experiments/cf_base_rates.py [N]   (from the repo root; default the 500 records of the tables)
"""
from __future__ import annotations

import json
import statistics
import sys

import torch

from editor_core import load_base_model
from editor_core.data import EditRequest, load_records
from editor_core.evaluate import score

torch.set_num_threads(1)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
model, tok = load_base_model()
recs = load_records("counterfact:../shared/data/counterfact/dev.json", n, one_per_subject=True)
rows = []
for r in recs:
    prompts = [q.prompt for q in r.loc]
    true = score(model, tok, [EditRequest(p, r.true_target) for p in prompts])
    new = score(model, tok, [EditRequest(p, r.edit.target) for p in prompts])
    para_true = score(model, tok, [EditRequest(p, r.true_target) for p in [r.edit.prompt, *r.rephrases]])
    para_new = score(model, tok, [EditRequest(p, r.edit.target) for p in [r.edit.prompt, *r.rephrases]])
    rows.append({"neighborhood": statistics.mean(float(t.mean_nll < w.mean_nll) for t, w in zip(true, new)),
                 "neighborhood_true_argmax": statistics.mean(float(t.exact) for t in true),
                 "efficacy": float(para_new[0].mean_nll < para_true[0].mean_nll),
                 "paraphrase": statistics.mean(float(w.mean_nll < t.mean_nll)
                                               for t, w in zip(para_true[1:], para_new[1:]))})
print(json.dumps({"n": len(rows), **{k: round(statistics.mean(x[k] for x in rows), 3) for k in rows[0]}}))
