"""Does a scoped edit's reply run its answer into a longer word ("Oxford" -> "Oxfordshire", "Sega" -> "SegaMX")
because the edit is released on the token that completes the answer's text, before the word has ended? On training
records (never a dev split): one scoped edit per record, greedy 16-token replies to the edit prompt, its first two
rephrases, and the edit prompt as a chat message; `says`/`mentions` as in editor_core.fluency.

Release rules (Selection.observe):
  said      the shipped rule: released once the reply's text contains the target
  boundary  released once the target is followed by something that ends the word (a space, punctuation, the end)

Usage: python weights/experiments/release_boundary.py zsre|counterfact [N] [RULE ...]   (from the repo root)

Measured (60 zsRE train records, 2026-12-02, 1 thread on a CPU shared with the test suite):
  said      prompt 0.883  chat 0.833  rephrase 0.817
  boundary  prompt 0.817  chat 0.517  rephrase 0.767
Not adopted. Left on for the token after its answer, the edit pushes the answer's last piece again ("Rimouski" ->
" Rimouskikikiki", "Activision" -> " Activisionisionision", "Edmundston" -> " Edmundstonstonston"), so a word it
ended cleanly under the shipped rule now runs on. The run-on words of the shipped rule ("Dorothy Waller" for
"Dorothy Wall", and on the dev replies "Oxfordshire", "SegaMX") are the unedited model's own continuation after
the answer: 1 of 60 here, 4 of 60 zsRE and 1 of 40 CounterFact dev edits in the last bench/says.py samples.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
import time

import torch

from editor_core import MENDEditor, load_base_model
from editor_core import scope as scope_mod
from editor_core.data import load_records
from editor_core.evaluate import local_generate, scoped_mend_method
from editor_core.fluency import mentions, says
from editor_core.scope import Scope

torch.set_num_threads(int(__import__("os").environ.get("THREADS", "1")))
kind = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
rules = sys.argv[3:] or ["said", "boundary"]
TOKENS = 16
shipped_observe = scope_mod.Selection.observe


def boundary_observe(self, reply: str) -> bool:
    # the last word may still grow: judge the reply without it until a later token ends it
    return shipped_observe(self, reply[: len(reply) - len(re.search(r"\w*$", reply).group())])


model, tok = load_base_model()
editor = MENDEditor.load("weights/smollm2", model)
scope = Scope.load("weights/smollm2", editor.layers)
path = {"zsre": "zsre:../shared/data/zsre/train.json", "counterfact": "counterfact:../shared/data/counterfact/train.json"}
recs = load_records(path[kind], None, one_per_subject=True)[-n:]
method = scoped_mend_method(model, tok, editor, scope)
gen = local_generate(model, tok, scope)
scope.attach(model)
deltas = [method([r]) for r in recs]  # the same edits under every rule
for rule in rules:
    scope_mod.Selection.observe = boundary_observe if rule == "boundary" else shipped_observe
    rows, fails, t0 = [], [], time.time()
    for r, d in zip(recs, deltas):
        scope.add("e", d)
        reph = r.rephrases[:2]
        out = gen([(r.edit.prompt, None, TOKENS), (None, r.edit.prompt, TOKENS), *((p, None, TOKENS) for p in reph)])
        rows.append({"prompt": float(says(out[0], r.edit.target)), "chat": float(mentions(out[1], r.edit.target)),
                     "rephrase": statistics.mean(says(o, r.edit.target) for o in out[2:]) if reph else 1.0})
        if not rows[-1]["prompt"]:
            fails.append([r.edit.target, out[0][:60]])
        scope.clear()
    print(json.dumps({"rule": rule, "data": kind, "n": len(rows),
                      **{k: round(statistics.mean(x[k] for x in rows), 3) for k in rows[0]},
                      "s": round(time.time() - t0)}), flush=True)
    print(json.dumps(fails), flush=True)
scope.detach()
