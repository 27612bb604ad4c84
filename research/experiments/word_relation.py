"""Whether a prompt that comes in by words (`WordCheck`: it names every rare word of the edit's question and keys at
cosine >= t, below the edit's radius) should also meet a stricter relation check than one the key radius lets in.
Keys only, the first N dev records (one per subject), each edit alone, each question by its best sentence-suffix
candidate; `own`: paraphrases / rephrases selecting their edit; `captured`: locality prompts; `same subject`:
other questions about the edited subject (`data._other_questions`).

    python research/experiments/word_relation.py 500

Printed (2026-12-07, at 533136e, the shipped scope: relation radius 0.55, 261 common words):
    counterfact, 500 records
      t None, relation radius by words 0.55: own 0.859 captured 0.013 same subject 0.192
      t 0.4, relation radius by words 0.55: own 0.954 captured 0.014 same subject 0.217
      t 0.4, relation radius by words 0.65: own 0.951 captured 0.013 same subject 0.205
      t 0.4, relation radius by words 0.7: own 0.941 captured 0.013 same subject 0.199
      t 0.4, relation radius by words 0.8: own 0.910 captured 0.013 same subject 0.195
      t 0.5, relation radius by words 0.55: own 0.938 captured 0.013 same subject 0.211
    zsre, 500 records
      t None: own 0.962; t 0.4, relation radius by words 0.55: own 0.976; 0.65: 0.974; 0.8: 0.968
i.e. the other questions that words let in pass a stricter relation check about as often as the paraphrases do:
0.7 would take back 0.018 of them for 0.013 of paraphrases. Not adopted: the word path keeps the one relation radius.
"""
import sys

import torch

from _keys import own_keys
from editor_core import load_base_model, load_records
from editor_core.scope import Scope, words_of

torch.set_num_threads(1)
N = int(sys.argv[1])
model, tok = load_base_model()
scope = Scope.load("weights/smollm2", [])
check, words = scope.relation_check(), scope.word_check()

for kind in ("counterfact", "zsre"):
    recs = load_records(f"{kind}:../shared/data/{kind}/dev.json", N, one_per_subject=True)
    edits = scope.prompt_keys(model, tok, [r.edit.prompt for r in recs])
    radii = torch.tensor(scope.radii(edits) or [scope.cfg.radius] * len(recs))
    rare = [words.rare(r.edit.prompt) for r in recs]
    stats = {}
    for name, items in (("own", [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]]),
                        ("captured", [(i, q.prompt) for i, r in enumerate(recs) for q in r.loc[:10]]),
                        ("same subject", [(i, p) for i, r in enumerate(recs) for p in r.extra["other_questions"]])):
        if not items:
            continue
        rec = torch.tensor([i for i, _ in items])
        keys = own_keys(scope, model, tok, [p for _, p in items], edits[rec])
        s = (keys * edits[rec]).sum(1)
        rc = (check.keys(keys) * check.keys(edits[rec])).sum(1)
        named = torch.tensor([bool(rare[i]) and rare[i] <= words_of(p) for i, p in items])
        stats[name] = (s, rc, named, radii[rec])
    print(f"{kind}, {len(recs)} records", flush=True)
    for t in (None, 0.4, 0.5):
        for rw in ((check.radius,) if t is None else (check.radius, 0.6, 0.65, 0.7, 0.75, 0.8)):
            line = f"  t {t}, relation radius by words {rw}:"
            for name, (s, rc, named, rad) in stats.items():
                ok = (s >= rad) & (rc >= check.radius)
                if t is not None:
                    ok |= named & (s >= t) & (rc >= rw)
                line += f" {name} {float(ok.float().mean()):.3f}"
            print(line, flush=True)
