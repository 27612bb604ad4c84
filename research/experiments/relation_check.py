"""The shipped relation check (`RelationCheck`, fitted by `mend fit-relation` on train records), keys only, on
the first N dev records of each set (one per subject), each edit alone as the service selects it: its bank
radius, each question by its best sentence-suffix candidate, then the relation check on that candidate.
`own`: rephrases / paraphrases selecting their edit; `captured`: locality prompts (zsRE NQ, CounterFact
neighbours) selecting it; `same subject`: other questions about the edited subject selecting it
(`data._other_questions`; zsRE dev asks almost every subject one question).

    python research/experiments/relation_check.py 300
"""
import sys

import torch

from _keys import own_keys
from editor_core import load_base_model, load_records
from editor_core.scope import Scope

torch.set_num_threads(1)
N = int(sys.argv[1])
model, tok = load_base_model()
scope = Scope.load("weights/smollm2", [])
check = scope.relation_check()
assert check is not None, "weights/smollm2 has no relation check: run `mend fit-relation`"
print(f"relation radius {check.radius}, k {check.map.shape[0]}")

for kind in ("counterfact", "zsre"):
    recs = load_records(f"{kind}:../shared/data/{kind}/dev.json", N, one_per_subject=True)
    edits = scope.prompt_keys(model, tok, [r.edit.prompt for r in recs])
    radii = torch.tensor(scope.radii(edits) or [scope.cfg.radius] * len(recs))
    line = f"{kind}, {len(recs)} records"
    for name, items in (("own", [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]]),
                        ("captured", [(i, q.prompt) for i, r in enumerate(recs) for q in r.loc[:4]]),
                        ("same subject", [(i, p) for i, r in enumerate(recs) for p in r.extra["other_questions"]])):
        if not items:
            continue
        rec = torch.tensor([i for i, _ in items])
        keys = own_keys(scope, model, tok, [p for _, p in items], edits[rec])
        shipped = (keys * edits[rec]).sum(1) >= radii[rec]
        related = (check.keys(keys) * check.keys(edits[rec])).sum(1) >= check.radius
        line += (f" | {name} ({len(items)}): without {float(shipped.float().mean()):.3f}, "
                 f"with {float((shipped & related).float().mean()):.3f}")
    print(line, flush=True)
