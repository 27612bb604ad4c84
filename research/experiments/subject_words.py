"""Words as a second witness of selection, keys only. A paraphrase that misses its edit's radius almost always
still names the edit's subject ("Jim Beam is headquartered in" for the edit of "The headquarter of Jim Beam is
located in"), while a neighbour never does (other subject, same relation). So: an edit's rare words are the words
of its prompt that at most RARE of the known other questions (the bank's source: train edit prompts) contain; a
request that contains all of an edit's rare words may select it from a looser radius `t` than its own.

Per set, the first N dev records (one per subject), each edit alone in the codebook (as single edits are judged),
every prompt keyed as a request is (its best sentence-suffix candidate): `own` = a rephrase/paraphrase selects its
edit; `captured` = a neighbour/locality prompt does; `same subject` = a prompt asking the edit's subject another
question does (the records' `extra["other_questions"]`). Each rule without and with the scope's relation check
(`RelationCheck`) on the candidate that selects.

    python research/experiments/subject_words.py 500

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

Printed (2026-12-07, this file at db1c178 plus the relation columns, the shipped check at radius 0.55; the other questions are the
library's, `data._other_questions`, now):
    zsre: 500 edits, 500 rephrases, 500 locality, 1 same-subject prompts
      without the relation check, t None: own 0.966  captured 0.000 | t 0.5: own 0.980 | t 0.4: own 0.980
      with the relation check,    t None: own 0.962  captured 0.000 | t 0.5: own 0.976 | t 0.4: own 0.976
    counterfact: 500 edits, 1000 rephrases, 5000 locality, 1000 same-subject prompts
      without the relation check, t None: own 0.860  captured 0.013  same subject 0.710
      without the relation check, t 0.5:  own 0.940  captured 0.013  same subject 0.851
      without the relation check, t 0.4:  own 0.960  captured 0.014  same subject 0.928
      with the relation check,    t None: own 0.859  captured 0.013  same subject 0.192
      with the relation check,    t 0.6:  own 0.880  captured 0.013  same subject 0.200
      with the relation check,    t 0.5:  own 0.938  captured 0.013  same subject 0.211
      with the relation check,    t 0.4:  own 0.954  captured 0.014  same subject 0.217
      with the relation check,    t 0.3:  own 0.967  captured 0.015  same subject 0.217
i.e. with the relation check beside them, words lift CounterFact paraphrases selecting their edit 0.859 -> 0.954
(t 0.4) for 0.001 of neighbours and 0.025 of same-subject questions, and zsRE rephrases 0.962 -> 0.976: the next
step for selection. Through the service a paraphrase that selects its edit gets the piece made for its words, and
0.857 said the answer where 0.851 selected (500 records), so most of the lift should reach the replies.
"""
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
check = scope.relation_check()


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


def best_cos(texts: list[str], keys_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(texts), n_edits) twice: per text, the best of its candidate keys' cosine to each edit key, and the
    relation check's cosine (`RelationCheck`) of that candidate to the edit's."""
    if not texts:
        return torch.zeros(0, len(keys_e)), torch.zeros(0, len(keys_e))
    keys, owner = scope.candidate_keys(model, tok, texts)
    sim, rel = keys @ keys_e.T, check.keys(keys) @ check.keys(keys_e).T
    out, out_rel = torch.full((len(texts), len(keys_e)), -2.0), torch.zeros(len(texts), len(keys_e))
    for j, o in enumerate(owner):
        better = sim[j] > out[o]
        out[o], out_rel[o] = torch.where(better, sim[j], out[o]), torch.where(better, rel[j], out_rel[o])
    return out, out_rel


for kind in ("zsre", "counterfact"):
    t0 = time.time()
    recs = load_records(f"{kind}:../shared/data/{kind}/dev.json", N, one_per_subject=True)
    keys_e = scope.prompt_keys(model, tok, [r.edit.prompt for r in recs])
    radius = torch.tensor(scope.radii(keys_e) or [scope.cfg.radius] * len(recs))
    reph = [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]]
    loc = [(i, q.prompt) for i, r in enumerate(recs) for q in r.loc[:10]]
    same = [(i, p) for i, r in enumerate(recs) for p in r.extra["other_questions"]]
    sims = {name: best_cos([p for _, p in items], keys_e) for name, items in
            (("reph", reph), ("loc", loc), ("same", same))}
    rare_e = [rare(r.edit.prompt) for r in recs]
    print(f"{kind}: {len(recs)} edits, {len(reph)} rephrases, {len(loc)} locality, {len(same)} same-subject prompts; "
          f"edits with no rare word {sum(not w for w in rare_e)}; keys {time.time() - t0:.0f} s", flush=True)

    def named(items):
        return torch.tensor([bool(rare_e[i]) and rare_e[i] <= words(p) for i, p in items])

    def rate(name, items, t, related=False):
        s, r = sims[name]
        if not items:
            return float("nan")
        i = torch.tensor([i for i, _ in items])
        own = s[torch.arange(len(items)), i]
        by_radius = own >= radius[i]
        by_words = named(items) & (own >= t) if t is not None else torch.zeros(len(items), dtype=torch.bool)
        ok = by_radius | by_words
        if related:  # the shipped relation check on the candidate selected by
            ok &= r[torch.arange(len(items)), i] >= check.radius
        return float(ok.float().mean())

    for related in (False, True):
        for t in (None, 0.6, 0.5, 0.4, 0.3):
            print(f"  {'with' if related else 'without'} the relation check, t {t}: "
                  f"own {rate('reph', reph, t, related):.3f}  captured {rate('loc', loc, t, related):.3f}  "
                  f"same subject {rate('same', same, t, related):.3f}", flush=True)
    print(f"  rephrases naming all their edit's rare words {float(named(reph).float().mean()):.3f}, "
          f"locality {float(named(loc).float().mean()):.3f}, same subject {float(named(same).float().mean()):.3f}")
    misses = [(i, p) for (i, p), s in zip(reph, sims["reph"][0]) if s[i] < radius[i]]
    for i, p in misses[:8]:
        print(f"    miss {float(sims['reph'][0][reph.index((i, p))][i]):.3f} < {float(radius[i]):.3f} "
              f"{p[-50:]!r} ~ {recs[i].edit.prompt!r} rare {sorted(rare_e[i])}")
