"""A second key for what is asked: the hidden state of a prompt's last token. The scope's key (mean over the prompt
after block 10) is dominated by the subject: 0.71 of CounterFact prompts asking an edited subject another relation
select the edit and say its answer (research/experiments/same_subject.py). The last token's state is what the model
is about to answer, i.e. the relation. Keys only: per edit alone in the codebook, a prompt selects it when the mean
key clears the edit's radius (as now) and, for the rule tried, the last-token key's cosine to the edit's clears r2.

`own`: paraphrase/rephrase selects its edit; `captured`: a neighbour/NQ prompt does; `same subject`: another
relation's template filled with the edited subject (CounterFact, two per record) does.

    python research/experiments/question_keys.py 300

Printed (2026-12-06, at c99f12a; CounterFact, first 300 dev records):
    now: own 0.853  captured 0.021  same subject 0.697
    block 10 r2 0.3: own 0.560  captured 0.018  same subject 0.167
    block 22 r2 0.2: own 0.813  captured 0.020  same subject 0.525
    block 22 r2 0.3: own 0.733  captured 0.020  same subject 0.372
    block 26 r2 0.3: own 0.737  captured 0.020  same subject 0.368
    block 26 r2 0.5: own 0.565  captured 0.018  same subject 0.138
`python research/experiments/question_keys.py 300 -1`: block -1 is the unedited model's next-token distribution
itself (the Hellinger affinity of the two prompts' distributions):
    counterfact: r2 0.3: own 0.743 captured 0.020 same subject 0.505;  r2 0.5: own 0.615 ... 0.333;  r2 0.8: own 0.377 ... 0.057
    zsre:        r2 0.3: own 0.973 (now 0.973);  r2 0.5: 0.970;  r2 0.8: 0.920 (captured 0.000 throughout)
i.e. the last token's state, and even what the model is about to answer, separate relations only about as well as
they separate wordings: every threshold that halves the same-subject selections loses a sixth or more of
CounterFact's paraphrases (many of which, such as "Frankie Albert, the", do not say what they ask). Not adopted.
"""
import json
import random
import sys
import time

import torch

from editor_core import load_base_model, load_records
from editor_core.scope import Scope, sentence_suffixes

torch.set_num_threads(1)
N = int(sys.argv[1])
BLOCKS = [int(b) for b in sys.argv[2:]] or [10, 16, 22, 26]
model, tok = load_base_model()
scope = Scope.load("weights/smollm2", [])
tok.padding_side = "right"


@torch.no_grad()
def last_states(texts: list[str]) -> dict[int, torch.Tensor]:
    """Per block in BLOCKS: (len(texts), d) the hidden state of each text's last token after that block."""
    out = {b: [] for b in BLOCKS}
    for i in range(0, len(texts), 32):
        enc = tok(texts[i:i + 32], return_tensors="pt", padding=True)
        last = enc["attention_mask"].sum(1) - 1
        o = model(**enc, output_hidden_states=True)
        hs = o.hidden_states  # hs[b + 1]: after block b
        for b in BLOCKS:
            if b == -1:  # the next-token distribution itself, as sqrt-probabilities (their dot is the Hellinger affinity)
                out[b].append(o.logits[torch.arange(len(last)), last].float().softmax(-1).sqrt())
            else:
                out[b].append(hs[b + 1][torch.arange(len(last)), last].float())
    return {b: torch.cat(v) for b, v in out.items()}


def best_suffix(texts: list[str], key_e: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Per text (against its own edit's key, row i of key_e): the sentence suffix whose mean key is nearest, and
    that cosine."""
    keys, owner = scope.candidate_keys(model, tok, texts)
    cands = [s for t in texts for s in sentence_suffixes(t)]
    best, chosen = torch.full((len(texts),), -2.0), list(texts)
    for j, o in enumerate(owner):
        c = float(keys[j] @ key_e[o])
        if c > best[o]:
            best[o], chosen[o] = c, cands[j]
    return chosen, best


raw = json.load(open("../shared/data/counterfact/train.json")) + json.load(open("../shared/data/counterfact/dev.json"))
by_rel, rel_of = {}, {}
for r in raw:
    by_rel.setdefault(r["requested_rewrite"]["relation_id"], set()).add(r["requested_rewrite"]["prompt"])
    rel_of[r["case_id"]] = r["requested_rewrite"]["relation_id"]
generic = [q.prompt for r in load_records("zsre:../shared/data/zsre/train.json", 300) for q in r.loc[:1]]
generic += [r.edit.prompt for k in ("zsre", "counterfact") for r in load_records(f"{k}:../shared/data/{k}/train.json", 300)]
center = {b: s.mean(0) * (b != -1) for b, s in last_states(generic).items()}  # distributions are not centred


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)


for kind in ("counterfact", "zsre"):
    t0 = time.time()
    rng = random.Random(0)
    recs = load_records(f"{kind}:../shared/data/{kind}/dev.json", N, one_per_subject=True)
    keys_e = scope.prompt_keys(model, tok, [r.edit.prompt for r in recs])
    radius = torch.tensor(scope.radii(keys_e) or [scope.cfg.radius] * len(recs))
    sets = {"own": [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]],
            "captured": [(i, q.prompt) for i, r in enumerate(recs) for q in r.loc[:4]]}
    if kind == "counterfact":
        sets["same subject"] = [(i, rng.choice(sorted(by_rel[x])).format(r.subject)) for i, r in enumerate(recs)
                                for x in rng.sample([x for x in sorted(by_rel) if x != rel_of[r.extra["case_id"]]], 2)]
    last_e = last_states([r.edit.prompt for r in recs])
    res = {}
    for name, items in sets.items():
        idx = torch.tensor([i for i, _ in items])
        chosen, mean_cos = best_suffix([p for _, p in items], keys_e[idx])
        last = last_states(chosen)
        res[name] = (mean_cos >= radius[idx], {b: (unit(last[b] - center[b]) * unit(last_e[b][idx] - center[b])).sum(-1)
                                               for b in BLOCKS})
    print(f"{kind}: {len(recs)} edits, {time.time() - t0:.0f} s", flush=True)
    print("  now: " + "  ".join(f"{n} {float(sel.float().mean()):.3f}" for n, (sel, _) in res.items()))
    for b in BLOCKS:
        for r2 in ((0.2, 0.3, 0.4, 0.5, 0.6) if b != -1 else (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)):
            print(f"  block {b} r2 {r2}: " + "  ".join(f"{n} {float((sel & (c[b] >= r2)).float().mean()):.3f}"
                                                    for n, (sel, c) in res.items()), flush=True)
