"""Sentence-suffix keys: do paraphrases select their own edit, and are neighbours captured, with 200 train edits
in one codebook? Whole-prompt keys vs the best of the prompt and its sentence suffixes (Scope.request_keys).

    python research/experiments/suffix_keys.py
Printed (2026-12-01): cf whole 0.03 / 0.062, cf suffix 0.56 / 0.068, zsre whole 0.925 / 0.0, zsre suffix 0.925 / 0.0
"""
import torch

from editor_core import load_base_model, load_records, MENDEditor
from editor_core.scope import Scope, sentence_suffixes

torch.set_num_threads(1)
model, tok = load_base_model()
editor = MENDEditor.load("weights/smollm2", model)
scope = Scope.load("weights/smollm2", editor.layers)
R = scope.cfg.radius
for kind, path in (("cf", "counterfact:../shared/data/counterfact/train.json"), ("zsre", "zsre:../shared/data/zsre/train.json")):
    recs = load_records(path, 200, one_per_subject=True)
    E = scope.prompt_keys(model, tok, [r.edit.prompt for r in recs])
    def best(prompts, mode):
        out = []
        for p in prompts:
            cands = sentence_suffixes(p) if mode == "suffix" else [p]
            K = scope.prompt_keys(model, tok, cands)
            sim = (K @ E.T).max(0).values  # best over candidates, per edit
            out.append(sim)
        return torch.stack(out)
    for mode in ("whole", "suffix"):
        own, cap = [], []
        for i, r in enumerate(recs):
            S = best(r.rephrases[:2], mode)
            for row in S:
                j = int(row.argmax()); own.append(j == i and row[j] >= R)
            L = best([l.prompt for l in r.loc[:3]], mode)
            cap += (L.max(1).values >= R).tolist()
        print(kind, mode, "rephrase->own", sum(own)/len(own), "loc captured", sum(cap)/len(cap), flush=True)
