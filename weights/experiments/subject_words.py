"""Words as a second witness of selection, keys only. A paraphrase that misses its edit's radius almost always
still names the edit's subject ("Jim Beam is headquartered in" for the edit of "The headquarter of Jim Beam is
located in"), while a neighbour never does (other subject, same relation). So: an edit's rare words are the words
of its prompt that at most RARE of the known other questions (the bank's source: train edit prompts) contain; a
request that contains all of an edit's rare words may select it from a looser radius `t` than its own.

Per set, the first N dev records (one per subject), each edit alone in the codebook (as single edits are judged),
every prompt keyed as a request is (its best sentence-suffix candidate): `own` = a rephrase/paraphrase selects its
edit; `captured` = a neighbour/locality prompt does; `same subject` = a prompt asking the edit's subject another
question does (CounterFact: another relation's template filled with the subject; zsRE: another dev question about
the subject with another answer). Then all N edits in one codebook: a paraphrase selecting another edit (`wrong`).

    python weights/experiments/subject_words.py 500

Printed (2026-12-06, at c99f12a; the zsRE same-subject set is near empty: dev asks each subject one question):
    counterfact: 500 edits, 1000 rephrases, 5000 locality, 1000 same-subject prompts
      t None: own 0.860  captured 0.013  same subject 0.715
      t 0.5:  own 0.940  captured 0.013  same subject 0.855
      t 0.3:  own 0.978  captured 0.015  same subject 0.963
      rephrases naming all their edit's rare words 0.956, locality 0.003, same subject 0.956
    zsre: t None: own 0.966 captured 0.000; t 0.5: own 0.980 captured 0.000
i.e. words would lift paraphrases to 0.94-0.98 without touching neighbours, but the same words name the subject in
every other question about it, and those already select the edit 0.715 of the time: the first thing to fix is that
(same_subject.py), and words make it worse. Not adopted.
"""
import json
import random
import re
import sys
import time

import torch

from editor_core import load_base_model, load_records
from editor_core.scope import Scope

torch.set_num_threads(1)
N = int(sys.argv[1])
RARE = 0.002
STOP = {"the", "of", "a", "an", "in", "is", "was", "what", "which", "who", "by", "to", "and", "on", "for", "at",
        "it", "its", "as", "from", "with", "does", "did", "do", "that", "this", "are", "were", "be", "has", "had"}
model, tok = load_base_model()
scope = Scope.load("weights/smollm2", [])


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"\w+", text.lower()) if w not in STOP}


bank_texts = [r.edit.prompt for k in ("zsre", "counterfact")
              for r in load_records(f"{k}:../shared/data/{k}/train.json", 4000, one_per_subject=True)]
df: dict[str, int] = {}
for t in bank_texts:
    for w in words(t):
        df[w] = df.get(w, 0) + 1


def rare(text: str) -> set[str]:
    return {w for w in words(text) if df.get(w, 0) <= RARE * len(bank_texts)}


def best_cos(texts: list[str], keys_e: torch.Tensor) -> torch.Tensor:
    """(len(texts), n_edits): per text, the best of its candidate keys' cosine to each edit key."""
    if not texts:
        return torch.zeros(0, len(keys_e))
    keys, owner = scope.candidate_keys(model, tok, texts)
    sim = keys @ keys_e.T
    out = torch.full((len(texts), len(keys_e)), -2.0)
    for j, o in enumerate(owner):
        out[o] = torch.maximum(out[o], sim[j])
    return out


def other_questions(kind: str, recs) -> list[list[str]]:
    if kind == "counterfact":
        raw = json.load(open("../shared/data/counterfact/train.json")) + json.load(open("../shared/data/counterfact/dev.json"))
        by_rel: dict[str, set[str]] = {}
        rel_of = {}
        for r in raw:
            by_rel.setdefault(r["requested_rewrite"]["relation_id"], set()).add(r["requested_rewrite"]["prompt"])
            rel_of[r["case_id"]] = r["requested_rewrite"]["relation_id"]
        rels = sorted(by_rel)
        rng = random.Random(0)
        out = []
        for rec in recs:
            others = [x for x in rels if x != rel_of[rec.extra["case_id"]]]
            out.append([rng.choice(sorted(by_rel[x])).format(rec.subject) for x in rng.sample(others, 2)])
        return out
    allrecs = load_records("zsre:../shared/data/zsre/dev.json", 10**6)
    return [[o.edit.prompt for o in allrecs if o.subject == rec.subject and o.edit.prompt != rec.edit.prompt
             and o.edit.target != rec.edit.target][:2] for rec in recs]


for kind in ("zsre", "counterfact"):
    t0 = time.time()
    recs = load_records(f"{kind}:../shared/data/{kind}/dev.json", N, one_per_subject=True)
    keys_e = scope.prompt_keys(model, tok, [r.edit.prompt for r in recs])
    radius = torch.tensor(scope.radii(keys_e) or [scope.cfg.radius] * len(recs))
    reph = [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]]
    loc = [(i, q.prompt) for i, r in enumerate(recs) for q in r.loc[:10]]
    same = [(i, p) for i, ps in enumerate(other_questions(kind, recs)) for p in ps]
    sims = {name: best_cos([p for _, p in items], keys_e) for name, items in
            (("reph", reph), ("loc", loc), ("same", same))}
    rare_e = [rare(r.edit.prompt) for r in recs]
    print(f"{kind}: {len(recs)} edits, {len(reph)} rephrases, {len(loc)} locality, {len(same)} same-subject prompts; "
          f"edits with no rare word {sum(not w for w in rare_e)}; keys {time.time() - t0:.0f} s", flush=True)

    def named(items):
        return torch.tensor([bool(rare_e[i]) and rare_e[i] <= words(p) for i, p in items])

    def rate(name, items, t, alone=True):
        s = sims[name]
        i = torch.tensor([i for i, _ in items])
        own = s[torch.arange(len(items)), i]
        by_radius = own >= radius[i]
        by_words = named(items) & (own >= t) if t is not None else torch.zeros(len(items), dtype=torch.bool)
        return float((by_radius | by_words).float().mean())

    for t in (None, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2):
        print(f"  t {t}: own {rate('reph', reph, t):.3f}  captured {rate('loc', loc, t):.3f}  "
              f"same subject {rate('same', same, t):.3f}", flush=True)
    print(f"  rephrases naming all their edit's rare words {float(named(reph).float().mean()):.3f}, "
          f"locality {float(named(loc).float().mean()):.3f}, same subject {float(named(same).float().mean()):.3f}")
    misses = [(i, p) for (i, p), s in zip(reph, sims["reph"]) if s[i] < radius[i]]
    for i, p in misses[:8]:
        print(f"    miss {float(sims['reph'][reph.index((i, p))][i]):.3f} < {float(radius[i]):.3f} "
              f"{p[-50:]!r} ~ {recs[i].edit.prompt!r} rare {sorted(rare_e[i])}")
