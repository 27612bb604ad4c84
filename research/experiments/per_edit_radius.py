"""Per-edit radius, keys only: raise an edit's radius to its similarity with the nearest prompt of a bank of other
questions (the edit prompts of the first 1000 CounterFact and 1000 zsRE train records, one per subject) plus delta, so
its scope covers no known other question. Dev records alone (one edit in the codebook, as single edits are judged):
own = a paraphrase selects the edit (its best candidate key, as `Scope.request_keys`); captured = a neighbour /
locality prompt does. "cap c": bank prompts nearer than c are taken for the same question and ignored.

    python research/experiments/per_edit_radius.py 300 1000

Printed (2026-12-02, at 3885357; the keys are unchanged since; first 300 dev records of each, one per subject):
    counterfact: nearest bank sim mean 0.420
      first 100, delta None: records with a neighbour captured 0.080
      first 300, delta None: records with a neighbour captured 0.083
      first 100, delta 0.0: records with a neighbour captured 0.070
      first 300, delta 0.0: records with a neighbour captured 0.067
       0.814 'Internet Explorer 5 was developed by' ~ 'Microsoft Internet Explorer 4 is developed by'
       0.892 'Airbus A330 is developed by' ~ 'Airbus A320neo family, developed by'
       0.928 "Bundesautobahn 20's owner" ~ 'Bundesautobahn 40 is owned by'
       0.946 'Bundesautobahn 98 is from' ~ 'Bundesautobahn 8, from'
      delta None: own 0.853 captured 0.026 raised 0.00
      delta 0.0: own 0.853 captured 0.017 raised 0.06
      delta 0.05: own 0.845 captured 0.016 raised 0.08
      delta 0.1: own 0.837 captured 0.013 raised 0.14
    zsre (a first run of the same code over both data sets): own 0.977 -> 0.973 at delta 0.0, captured 0.000
"""
import sys, time, json
import torch
torch.set_num_threads(1)
from editor_core import load_base_model, load_records
from editor_core.scope import Scope

model, tok = load_base_model()
scope = Scope.load("weights/smollm2", [])
r0 = scope.cfg.radius
N, B = int(sys.argv[1]), int(sys.argv[2])

def keys(texts):
    return scope.prompt_keys(model, tok, texts)

def best(prompts, edit_key):
    k, owner = scope.candidate_keys(model, tok, prompts)
    sim = (k @ edit_key).tolist()
    out = [-1.0] * len(prompts)
    for s, o in zip(sim, owner):
        out[o] = max(out[o], s)
    return out

t0 = time.time()
bank_prompts = []
for kind in ("counterfact", "zsre"):
    recs = load_records(f"{kind}:../shared/data/{kind}/train.json", B, one_per_subject=True)
    bank_prompts += [r.edit.prompt for r in recs]
bank = keys(bank_prompts)
print(f"bank {len(bank)} keyed in {time.time()-t0:.0f}s", flush=True)
for kind in ("counterfact",):
    recs = load_records(f"{kind}:../shared/data/{kind}/dev.json", N, one_per_subject=True)
    ek = keys([r.edit.prompt for r in recs])
    nearest = (ek @ bank.T).max(1).values
    rows = []
    for i, r in enumerate(recs):
        rows.append((float(nearest[i]), best(r.rephrases, ek[i]), best([q.prompt for q in r.loc], ek[i])))
    print(f"{kind}: keyed in {time.time()-t0:.0f}s; nearest bank sim mean {nearest.mean():.3f}", flush=True)
    for delta in (None, 0.0, 0.02):
        for m in (100, 300):
            anyc = sum(any(s >= (r0 if delta is None else max(r0, near + delta)) for s in loc) for near, _, loc in rows[:m])
            print(f"  first {m}, delta {delta}: records with a neighbour captured {anyc/m:.3f}", flush=True)
    nb = (ek @ bank.T)
    for i in range(len(recs)):
        j = int(nb[i].argmax())
        if nb[i, j] >= 0.75:
            print(f"   {nb[i,j]:.3f} {recs[i].edit.prompt!r} ~ {bank_prompts[j]!r}")
    for delta in (None, 0.0, 0.02, 0.05, 0.1):
        own = capt = n_own = n_capt = raised = 0
        for near, reph, loc in rows:
            rad = r0 if delta is None else max(r0, near + delta)
            raised += rad > r0
            own += sum(s >= rad for s in reph); n_own += len(reph)
            capt += sum(s >= rad for s in loc); n_capt += len(loc)
        print(f"  delta {delta}: own {own/n_own:.3f} captured {capt/n_capt:.3f} raised {raised/len(rows):.2f}", flush=True)
    # also: caps on the raise (ignore bank prompts that are nearer than c: likely the same question)
    for cap in (0.75, 0.8, 0.85, 0.9):
        for delta in (0.0, 0.02):
            own = capt = n_own = n_capt = 0
            for near, reph, loc in rows:
                rad = r0 if near >= cap else max(r0, near + delta)
                own += sum(s >= rad for s in reph); n_own += len(reph)
                capt += sum(s >= rad for s in loc); n_capt += len(loc)
            print(f"  cap {cap} delta {delta}: own {own/n_own:.3f} captured {capt/n_capt:.3f}", flush=True)
