"""Selection after many edits, keys only: the first N dev records (one per subject) as N edits in one codebook, each
with its bank radius (`Scope.radii`), against each edit alone (how single edits are judged). Per record, a
rephrase/paraphrase is `own` when it selects its own edit (`Scope.request_keys` then `Scope.select`, as a request
is keyed) and `other` when it selects another edit; a locality prompt (zsRE's NQ question, CounterFact's
neighbours) is `captured` when it selects any edit. This is the scope's share of the 1,000-sequential-edit target:
an edit that is not selected cannot be said, and one selected by the wrong prompt changes its reply.

    python research/experiments/sequential_keys.py 1000             # both; `... 1000 counterfact` for one
    python research/experiments/sequential_keys.py 1000 zsre --fill 10000   # 9,000 train edits stored after them

`--fill K` stores train records of other subjects after the N dev ones until K edits are stored (as
bench/lifelong_story.py --fill does); only the dev records are checked.

Printed (2026-12-02, at a867670, the shipped scope with its bank of 2,000 train prompts; first 1,000 dev records):
    zsre 1000 edits, alone: rephrases selecting their own edit 0.958, another edit 0.000; locality prompts selecting an edit 0.000
    zsre 1000 edits, all: rephrases selecting their own edit 0.958, another edit 0.001; locality prompts selecting an edit 0.000
    counterfact 1000 edits, alone: rephrases selecting their own edit 0.851, another edit 0.000; locality prompts selecting an edit 0.011
    counterfact 1000 edits, all: rephrases selecting their own edit 0.848, another edit 0.009; locality prompts selecting an edit 0.047
      'Honda NSR500V is created by' -> the edit of 'Honda NS500 is created by' (its radius 0.734)
      'Theodor Herzl speaks' -> the edit of 'Theodor Herzl follows the religion of' (its radius 0.630)
      'What is the twin city of Istanbul? It is' -> the edit of 'What is the twin city of Rome? It is' (its radius 0.768)
      'Canada is located in' -> the edit of 'England is located in' (its radius 0.630)
With the relation check (`RelationCheck`, radius 0.55; 2026-12-07, at 27a535b plus this file's codebooks given the check), CounterFact only:
    counterfact 1000 edits, alone: rephrases selecting their own edit 0.850, another edit 0.000; locality prompts selecting an edit 0.011
    counterfact 1000 edits, all: rephrases selecting their own edit 0.848, another edit 0.007; locality prompts selecting an edit 0.041
i.e. the same subject asked another relation (Herzl, Montesquieu) is no longer captured, and the near-twins are.
With the word check too (`WordCheck`, radius 0.4, 261 common words; 2026-12-07, at b5e1277, the codebooks given the
edits' prompts):
    zsre 1000 edits, alone: rephrases selecting their own edit 0.964, another edit 0.000; locality prompts selecting an edit 0.000
    zsre 1000 edits, all: rephrases selecting their own edit 0.963, another edit 0.001; locality prompts selecting an edit 0.000
    counterfact 1000 edits, alone: rephrases selecting their own edit 0.956, another edit 0.000; locality prompts selecting an edit 0.012
    counterfact 1000 edits, all: rephrases selecting their own edit 0.947, another edit 0.007; locality prompts selecting an edit 0.044
      'The twin city of New York City is' -> the edit of 'State University of New York is based in' (its radius 0.630)
i.e. words reach paraphrases with 1,000 edits stored as they do alone (0.848 -> 0.947), for 0.003 more captured
neighbour prompts: a prompt naming every rare word of another edit's subject ("new", "york").
With 9,000 train edits stored after the 1,000 zsRE dev ones (`1000 zsre --fill 10000`, 2026-12-07, the commit that added `--fill`; 274 s):
    zsre 1000 edits (of 10000 stored), alone: rephrases selecting their own edit 0.964, another edit 0.000; locality prompts selecting an edit 0.000
    zsre 1000 edits (of 10000 stored), all: rephrases selecting their own edit 0.956, another edit 0.013; locality prompts selecting an edit 0.001
      'nq question: who does the voice of mickey mouse on mickey mouse clubhouse' -> the edit of 'Who is the creator of Mickey Mouse universe?' (its radius 0.630)
1,000 edits in one codebook leave zsRE's selection as it is alone. CounterFact's neighbour prompts are captured
by some other edit 4x as often (0.047): near-twin subjects (Honda NSR500V / NS500), the same subject asked another
relation (Herzl), and short prompts alike but for one name. A captured prompt's reply changes only where the
other edit's delta changes its first token (the edit is released once the reply is not its answer).
"""
import json
import sys
import time

import torch

from editor_core import LowRankDelta, load_base_model, load_records
from bench.lifelong_story import fill
from editor_core.scope import Scope

torch.set_num_threads(1)
model, tok = load_base_model()
scope = Scope.load("weights/smollm2", [])
args = sys.argv[1:]
FILL = int(args.pop(args.index("--fill") + 1)) if "--fill" in args else 0
if FILL:
    args.remove("--fill")
N = int(args[0])
KINDS = args[1:] or ["zsre", "counterfact"]


def book_of(keys, radii, ids, prompts):
    book = scope.codebook.cleared()  # the shipped scope's own rule, its relation and word checks included
    for i in ids:
        meta = {"radii": json.dumps([radii[i]]), "prompts": json.dumps([prompts[i]])}
        book = book.added(str(i), LowRankDelta({}, meta, keys[i : i + 1]))
    return book


for kind in KINDS:
    t0 = time.time()
    recs = load_records(f"{kind}:../shared/data/{kind}/dev.json", N, one_per_subject=True)
    stored = fill(recs, load_records(f"{kind}:../shared/data/{kind}/train.json"), FILL) if FILL else recs
    prompts = [r.edit.prompt for r in stored]
    keys = scope.prompt_keys(model, tok, prompts)
    radii = scope.radii(keys)
    everything = book_of(keys, radii, range(len(stored)), prompts)
    counts = {"alone": dict(own=0, other=0, reph=0, captured=0, loc=0),
              "all": dict(own=0, other=0, reph=0, captured=0, loc=0)}
    captures = []
    for i, r in enumerate(recs):
        reph, loc = r.rephrases[:2], [q.prompt for q in r.loc][:2]
        for name, book in (("all", everything), ("alone", book_of(keys, radii, [i], prompts))):
            chosen = scope.select(scope.request_keys(model, tok, reph + loc, book), book, reph + loc)
            c = counts[name]
            c["own"] += sum(s == str(i) for s in chosen[: len(reph)])
            c["other"] += sum(s not in (None, str(i)) for s in chosen[: len(reph)])
            c["reph"] += len(reph)
            c["captured"] += sum(s is not None for s in chosen[len(reph) :])
            if name == "all":
                captures += [(q, stored[int(s)].edit.prompt, radii[int(s)]) for q, s in zip(loc, chosen[len(reph) :])
                             if s not in (None, str(i))]
            c["loc"] += len(loc)
    for name, c in counts.items():
        print(f"{kind} {len(recs)} edits (of {len(stored)} stored), {name}: rephrases selecting their own edit {c['own'] / c['reph']:.3f}, "
              f"another edit {c['other'] / c['reph']:.3f}; locality prompts selecting an edit "
              f"{c['captured'] / c['loc']:.3f} ({time.time() - t0:.0f}s)", flush=True)
    for q, p, rad in captures[:20]:  # what another edit captures
        print(f"  {q!r} -> the edit of {p!r} (its radius {rad:.3f})")
