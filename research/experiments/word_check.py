"""The shipped word check (`WordCheck`, `mend fit-words`: common words from the edit prompts of 4,000 train records
per set), keys only, through the library's own selection (`Codebook.nearest`): the first N dev records of each set
(one per subject), each edit alone in a codebook as a single edit is judged, its bank radius and the relation
check as shipped, each question by its best sentence-suffix candidate (`request_keys`). `own`: rephrases /
paraphrases selecting their edit; `captured`: locality prompts (zsRE NQ, CounterFact neighbours) selecting it;
`same subject`: other questions about the edited subject selecting it (`data._other_questions`).

    python research/experiments/word_check.py 500
"""
import json
import sys

import torch

from _keys import own_keys
from editor_core import load_base_model, load_records
from editor_core.delta import LowRankDelta
from editor_core.scope import Scope

torch.set_num_threads(1)
N = int(sys.argv[1])
model, tok = load_base_model()
scope = Scope.load("weights/smollm2", [])
assert scope.word_check() is not None, "weights/smollm2 has no word check: run `mend fit-words`"
print(f"word radius {scope.cfg.word_radius}, {len(scope.common)} common words; "
      f"relation radius {scope.cfg.relation_radius}")
common = scope.common

for kind in ("counterfact", "zsre"):
    recs = load_records(f"{kind}:../shared/data/{kind}/dev.json", N, one_per_subject=True)
    edits = scope.prompt_keys(model, tok, [r.edit.prompt for r in recs])
    radii = scope.radii(edits) or [scope.cfg.radius] * len(recs)
    deltas = [LowRankDelta({}, {"prompts": json.dumps([r.edit.prompt]), "radii": json.dumps([radii[i]])},
                           edits[i:i + 1]) for i, r in enumerate(recs)]
    groups = (("own", [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]]),
              ("captured", [(i, q.prompt) for i, r in enumerate(recs) for q in r.loc[:10]]),
              ("same subject", [(i, p) for i, r in enumerate(recs) for p in r.extra["other_questions"]]))
    keyed = {}
    for name, items in groups:
        if items:
            rec = torch.tensor([i for i, _ in items])
            keyed[name] = (items, own_keys(scope, model, tok, [p for _, p in items], edits[rec]))
    for words in (None, common):
        scope.with_words(words, 0.4 if words else None)
        line = f"{kind}, {len(recs)} records, {'with' if words else 'without'} the word check"
        for name, (items, keys) in keyed.items():
            empty = scope.codebook.cleared()
            hit = [empty.added("e", deltas[i]).nearest(keys[j:j + 1], scope.cfg.radius, [p])[0] is not None
                   for j, (i, p) in enumerate(items)]
            line += f"; {name} {sum(hit) / len(hit):.3f} of {len(hit)}"
        print(line, flush=True)
