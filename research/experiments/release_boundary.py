"""Does a scoped edit's reply run its answer into a longer word ("Oxford" -> "Oxfordshire", "Sega" -> "SegaMX")
(Runs at commit d8387a1, the code it was measured on: it overrides Scope's private step methods, whose signatures
changed since; `git worktree add /tmp/x d8387a1` to rerun it.)
because the edit is released on the token that completes the answer's text, before the word has ended? On training
records (never a dev split): one scoped edit per record, greedy 16-token replies to the edit prompt, its first two
rephrases, and the edit prompt as a chat message; `says`/`mentions` as in editor_core.fluency.

Release rules (Selection.observe):
  said      the shipped rule: released once the reply's text contains the target
  boundary  released once the target is followed by something that ends the word (a space, punctuation, the end)
  ended     `boundary`, with each form's target extended by the token that ends the word: of the tokens that
            start with neither a letter nor a digit, the one the unedited model likes best after prompt + target
            (the delta is then trained, and stepped, to say it)

Usage: python research/experiments/release_boundary.py zsre|counterfact [N] [RULE ...]   (from the repo root)

Measured (60 zsRE train records, 2026-12-02, 1 thread on a CPU shared with the test suite):
  said      prompt 0.883  chat 0.833  rephrase 0.817
  boundary  prompt 0.817  chat 0.517  rephrase 0.767
  ended     prompt 0.883  chat 0.850  rephrase 0.800
On 200 zsRE train records (the 60 above among them; each a 6-7 min run, 1 thread on the shared CPU):
  said      prompt 0.880  chat 0.875  rephrase 0.735
  ended     prompt 0.895  chat 0.890  rephrase 0.720
`ended` fixes some run-on words ("Dorothy Waller" for "Dorothy Wall") and loses other edits ("member of the
Pennsylvania House." for "... House of Representatives", "Robert Youngsonsonson"). Its net effect, +0.015 on
the prompt and in chat and -0.015 on the rephrase, is within the noise of 200 records (one standard error is about
0.023), so it is not adopted. A larger run, or the ended token folded into the editor's training targets, would
settle it. `boundary`, not adopted: left on for the token after its answer, the edit pushes the answer's last piece again ("Rimouski" ->
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
from editor_core.data import EditRequest, join, load_records
from editor_core.evaluate import local_generate, scoped_mend_method
from editor_core.scope import forms_of, in_forms
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
vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
ends = torch.tensor([bool(t) and not tok.convert_tokens_to_string([t])[:1].isalnum()
                     and t not in tok.all_special_tokens for t in vocab])


@torch.no_grad()
def ended(req: EditRequest) -> EditRequest:
    prompt, target = join(req.prompt, req.target)
    ids = tok(prompt + target, return_tensors="pt").input_ids
    logits = model(ids).logits[0, -1]
    k = min(len(ends), len(logits))
    logits = logits[:k].masked_fill(~ends[:k], float("-inf"))
    return EditRequest(req.prompt, req.target + tok.decode([int(logits.argmax())]))


def ended_method(recs):
    forms = [ended(f) for f in in_forms(tok, [r.edit for r in recs])]
    pieces = editor.compute_deltas(model, tok, forms)
    return scope.scoped(model, tok, pieces, forms, [r.edit.prompt for r in recs], forms_of(tok))


gen = local_generate(model, tok, scope)
scope.attach(model)
extended = {}
for rule in rules:
    if rule == "ended":
        deltas = [ended_method([r]) for r in recs]
    elif "deltas" not in extended:
        extended["deltas"] = [method([r]) for r in recs]  # the same edits under both shipped-target rules
    deltas = deltas if rule == "ended" else extended["deltas"]
    scope_mod.Selection.observe = shipped_observe if rule == "said" else boundary_observe
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

