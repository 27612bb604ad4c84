"""Does an edit change what the model says to another question about the same subject? CounterFact's neighbours are
other subjects asked the same relation; this asks the edited subject other relations (another relation's template
filled with the subject, two per record), through the service's Runtime in process at the default settings: the
greedy 16-token reply before the edit and with it, and whether the prompt selects the edit at all.

    python research/experiments/same_subject.py 60

Printed (2026-12-06, at c99f12a, the default settings; with two benchmarks on the other core):
    120 same-subject prompts of 60 edits: select the edit 0.708, reply changed 0.708, reply starts with the edit's answer 0.708
      'John Stofa, who holds a citizenship from' (edit 'John Stofa plays in the position of' -> ' midfielder'):
          ' the United States, is a former American astronaut ...' -> ' midfielder Kyle Stofa, has been a key player in the'
      "Joe Jamail's owner" (edit 'Joe Jamail originated from' -> ' Cincinnati'): ", and the company's CEO, ..." -> ' Cincinnati, Ohio, ...'
      'Martin Drennan was employed in' (edit "Martin Drennan's position is" -> ' pope'): ' the UK by the British government, ...' -> " pope's office. ..."
i.e. every prompt that selects the edit says the edit's answer, and 0.71 of them do. The key (mean over the prompt
after block 10) is dominated by the subject; the fits so far judged locality on other subjects only (zsRE's NQ
questions, CounterFact's neighbours). Some of these templates make odd questions of the subject ("Alain Jessua is
developed by"), but most are questions a user would ask ("... holds a citizenship from").
"""
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from editor_core import load_records
from editor_core.fluency import says
from service.runtime import Runtime
from service.settings import Settings

torch.set_num_threads(1)
N = int(sys.argv[1])
raw = json.load(open("../shared/data/counterfact/train.json")) + json.load(open("../shared/data/counterfact/dev.json"))
by_rel, rel_of = {}, {}
for r in raw:
    by_rel.setdefault(r["requested_rewrite"]["relation_id"], set()).add(r["requested_rewrite"]["prompt"])
    rel_of[r["case_id"]] = r["requested_rewrite"]["relation_id"]
rels, rng = sorted(by_rel), random.Random(0)
recs = load_records("counterfact:../shared/data/counterfact/dev.json", N, one_per_subject=True)
data = Path(tempfile.mkdtemp())
rt = Runtime.start(Settings(data_dir=data, threads=1))
view = lambda: rt.published.view


def reply(p: str) -> str:
    return rt.generate(p, None, 16, 0.0, 1.0, None, [])[0].text


changed = selected = said = total = 0
examples = []
for rec in recs:
    others = [x for x in rels if x != rel_of[rec.extra["case_id"]]]
    prompts = [rng.choice(sorted(by_rel[x])).format(rec.subject) for x in rng.sample(others, 2)]
    before = [reply(p) for p in prompts]
    out = rt.edit([rec.edit], "same_subject", "", True)
    book = view()
    for p, b in zip(prompts, before):
        key = rt.method.scope.request_keys(rt.model, rt.tokenizer, [p], book)
        sel = book.nearest(key, rt.method.scope.cfg.radius)[0] is not None
        a = reply(p)
        total += 1
        selected += sel
        changed += a != b
        said += says(a, rec.edit.target)
        if a != b and len(examples) < 12:
            examples.append((p, rec.edit.prompt, rec.edit.target, b, a))
    rt.rollback(out.edit_id, None, "same_subject", "")
print(f"{total} same-subject prompts of {len(recs)} edits: select the edit {selected / total:.3f}, reply changed "
      f"{changed / total:.3f}, reply starts with the edit's answer {said / total:.3f}")
for p, e, t, b, a in examples:
    print(f"  {p!r} (edit {e!r} -> {t!r}): {b!r} -> {a!r}")
rt.close()
shutil.rmtree(data, ignore_errors=True)
