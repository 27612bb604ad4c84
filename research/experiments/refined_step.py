"""Do scoped edits that miss their own prompt miss because the step is too small, or because the direction is wrong?
(Runs at commit ef62732, the code it was measured on: it overrides Scope's private step methods, whose signatures
changed since; `git worktree add /tmp/x ef62732` to rerun it.)
On training records (never a dev split): one scoped edit per record, greedy 16-token replies to the edit prompt,
its first two rephrases, and the edit prompt as a chat message; `says`/`mentions` as in editor_core.fluency.

Step rules (Scope._stepped), each applied to the pieces whose own target is not yet the teacher-forced argmax:
  shipped   the shipped rule: the step doubled from 2 while <= 8
  x16       doubled while <= 16
  refined   the shipped rule, then up to ROUNDS rounds that add MEND's own update computed on the edited model (the
            gradient taken with the piece acting), at step 2: the later tokens of a multi-word answer get a
            direction of their own instead of a larger copy of the first one
  tuned     the shipped rule, then up to TUNE Adam steps on the left factors of the pieces still short (their
            right factors, MEND's keys ũ, fixed) on their own target NLL, until the target is the argmax
  ended     `refined`, with each form's target extended by the token that ends the word (of the tokens that start
            with neither a letter nor a digit, the one the unedited model likes best after prompt + target), and
            the edit released only once the word has ended (research/experiments/release_boundary.py's `ended`)

Usage: python research/experiments/refined_step.py zsre|counterfact [N] [RULE ...]   (from the repo root)
Environment: THREADS (torch threads, 1), ROUNDS (refinement rounds of `refined` and `ended`, 2), TUNE (Adam steps of
`tuned*`, 10), TUNE_LR (0.05). `short`: edits with a piece that misses its own target after the doubling;
`still_short`: after the rule's own fix.

Measured 2026-12-02 at 17c45d4 (the last 150 zsRE / 100 CounterFact train records, one per subject; 1 thread each,
two or three such runs sharing the 2 cores, so edit_s is inflated and not comparable across rows):
  zsRE 150          prompt  chat   rephrase  short  still_short  edit_s p50
    shipped         0.867   0.860  0.740     19     19           1.25
    refined         0.867   0.867  0.740     19     18           1.29
    x16             0.867   0.867  0.740     19     19           1.31
    tuned           0.940   0.933  0.793     19      3           1.33   (108 Adam steps in all)
    tuned_ended     0.980   0.980  0.787     31      3           2.41   (ROUNDS=0; 143 steps; the busiest CPU)
  CounterFact 100
    shipped         0.950   0.940  0.685      5      5           1.16
    refined         0.950   0.960  0.685      5      3           1.18
    ended           0.950   0.940  0.685      5      5           1.19   (ROUNDS=0: ended targets, no tuning)
    tuned           0.950   0.980  0.685      5      0           1.62   (18 steps)
No larger step and no second MEND step fixes the edits that miss: they need another direction, which tuning the
left factors finds. Once they take, what is left of the misses is the answer run on into a longer word ("Dutchman",
"violinist", "Jacksonville", "Dorothy Waller": 4 of 5 CounterFact and 7 of 9 zsRE misses under `tuned`), which
ending the word fixes. Refinement made the broken replies worse ("the the the ..."). Shipped since 0fc0d00:
tune_steps 10 and end_words (weights/smollm2/scope.json).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import sys
import time

import torch

from editor_core import MENDEditor, load_base_model
from editor_core import scope as scope_mod
from editor_core.data import EditRequest, join, load_records, target_nll, target_scores, tokenize_edits
from editor_core.scoring import answer_logits
from editor_core.delta import LowRankDelta
from editor_core.evaluate import local_generate, scoped_mend_method
from editor_core.fluency import mentions, says
from editor_core.scope import Scope, forms_of, in_forms

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
kind = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
rules = sys.argv[3:] or ["shipped", "refined"]
TOKENS, ROUNDS = 16, int(os.environ.get("ROUNDS", "2"))
TUNE, TUNE_LR = int(os.environ.get("TUNE", "10")), float(os.environ.get("TUNE_LR", "0.05"))

model, tok = load_base_model()
editor = MENDEditor.load("weights/smollm2", model)
shipped = Scope.load("weights/smollm2", editor.layers)
path = {"zsre": "zsre:../shared/data/zsre/train.json", "counterfact": "counterfact:../shared/data/counterfact/train.json"}
recs = load_records(path[kind], None, one_per_subject=True)[-n:]


class Refined(Scope):
    def _stepped(self, model, tok, pieces, keys, requests):
        out = super()._stepped(model, tok, pieces, keys, requests)
        deltas, steps = [d for d, _ in out], [s for _, s in out]
        short = [i for i, ok in enumerate(self._takes(model, tok, deltas, requests)) if not ok]
        self.stats["short"] += bool(short)
        for _ in range(self.rounds):
            if not short:
                break
            with self.acting(self.stacked([deltas[i] for i in short])):
                more = editor.compute_deltas(model, tok, [requests[i] for i in short])
            for i, m in zip(short, more):
                add = LowRankDelta({k: (l * self.cfg.scale, r) for k, (l, r) in m.factors.items()})
                deltas[i] = LowRankDelta(LowRankDelta.stack([deltas[i], add]).factors, key=keys[i])
            short = [i for i, ok in zip(short, self._takes(model, tok, [deltas[i] for i in short],
                                                            [requests[i] for i in short])) if not ok]
        if short and self.tune:
            short = self._tuned(model, tok, deltas, keys, requests, short)
        self.stats["still_short"] += bool(short)
        return list(zip(deltas, steps))

    def _tuned(self, model, tok, deltas, keys, requests, short):
        lefts = [{k: l.detach().clone().requires_grad_(True) for k, (l, _) in deltas[i].factors.items()} for i in short]
        rights = [{k: r for k, (_, r) in deltas[i].factors.items()} for i in short]
        groups = [{"params": [l], "lr": TUNE_LR * float(l.detach().abs().mean()) + 1e-12} for ls in lefts for l in ls.values()]
        opt = torch.optim.Adam(groups)
        batch = tokenize_edits(tok, [requests[i] for i in short], editor.cfg.max_length)
        for step in range(TUNE):
            with torch.enable_grad():
                pieces = [LowRankDelta({k: (ls[k], rs[k]) for k in ls}) for ls, rs in zip(lefts, rights)]
                with self.acting(self.stacked(pieces)):
                    logits = answer_logits(model, batch)
                ok = target_scores(logits.detach(), batch["labels"])[1]
                if ok.all():
                    break
                loss = (target_nll(logits, batch["labels"]) * (~ok).float()).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.stats["tune_steps"] = self.stats.get("tune_steps", 0) + 1
        for j, i in enumerate(short):
            deltas[i] = LowRankDelta({k: (lefts[j][k].detach(), rights[j][k]) for k in lefts[j]}, key=keys[i])
        return [i for i, good in zip(short, self._takes(model, tok, [deltas[i] for i in short],
                                                         [requests[i] for i in short])) if not good]


vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
ends = torch.tensor([bool(t) and not tok.convert_tokens_to_string([t])[:1].isalnum()
                     and t not in tok.all_special_tokens for t in vocab])
shipped_observe = scope_mod.Selection.observe


def boundary_observe(self, reply: str) -> bool:
    # the last word may still grow: judge the reply without it until a later token ends it
    return shipped_observe(self, reply[: len(reply) - len(re.search(r"\w*$", reply).group())])


@torch.no_grad()
def ended(req: EditRequest) -> EditRequest:
    prompt, target = join(req.prompt, req.target)
    ids = tok(prompt + target, return_tensors="pt").input_ids
    logits = model(ids).logits[0, -1]
    k = min(len(ends), len(logits))
    logits = logits[:k].masked_fill(~ends[:k], float("-inf"))
    return EditRequest(req.prompt, req.target + tok.decode([int(logits.argmax())]))


def ended_method(scope):
    def run(recs):
        forms = [ended(f) for f in in_forms(tok, [r.edit for r in recs])]
        pieces = editor.compute_deltas(model, tok, forms)
        return scope.scoped(model, tok, pieces, forms, [r.edit.prompt for r in recs], forms_of(tok))
    return run


def make(rule: str) -> Scope:
    cfg = shipped.cfg if rule != "x16" else dataclasses.replace(shipped.cfg, max_scale=16.0)
    s = Refined(cfg, editor.layers, shipped.center, shipped.proj)  # rounds 0: the rule as shipped, counted
    s.stats, s.rounds = {"short": 0, "still_short": 0}, ROUNDS if rule in ("refined", "ended") else 0
    s.tune = rule in ("tuned", "tuned_ended")
    return s


for rule in rules:
    scope = make(rule)
    method = ended_method(scope) if rule.endswith("ended") else scoped_mend_method(model, tok, editor, scope)
    scope_mod.Selection.observe = boundary_observe if rule.endswith("ended") else shipped_observe
    gen = local_generate(model, tok, scope)
    scope.attach(model)
    rows, fails, t0, edit_s = [], [], time.time(), []
    for r in recs:
        t = time.perf_counter()
        d = method([r])
        edit_s.append(time.perf_counter() - t)
        scope.add("e", d)
        reph = r.rephrases[:2]
        out = gen([(r.edit.prompt, None, TOKENS), (None, r.edit.prompt, TOKENS), *((p, None, TOKENS) for p in reph)])
        rows.append({"prompt": float(says(out[0], r.edit.target)), "chat": float(mentions(out[1], r.edit.target)),
                     "rephrase": statistics.mean(says(o, r.edit.target) for o in out[2:]) if reph else 1.0})
        if not rows[-1]["prompt"]:
            fails.append([r.edit.target, out[0][:60]])
        scope.clear()
    scope.detach()
    print(json.dumps({"rule": rule, "data": kind, "n": len(rows),
                      **{k: round(statistics.mean(x[k] for x in rows), 3) for k in rows[0]},
                      **getattr(scope, "stats", {}), "edit_s_p50": round(statistics.median(edit_s), 3),
                      "s": round(time.time() - t0)}), flush=True)
    print(json.dumps(fails), flush=True)
