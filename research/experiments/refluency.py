"""Fluency of saved replies (bench/says.py --samples) judged with editor_core.fluency.fluency: the reply and its
references on the same number of words. Runs made before that rule (2026-12-02, 01:20) are re-judged from
their replies here.

    python research/experiments/refluency.py research/results/samples/*.json
"""
import json
import statistics
import sys

from editor_core.fluency import fluency

for path in sys.argv[1:]:
    rows = json.load(open(path))
    judged = [fluency(r["reply"], {"long": r["unedited"], "answer_in": r["answer_in"]}, r["target"]) for r in rows]
    print(path, len(rows), {k: round(statistics.mean(j[k] for j in judged), 3) for k in judged[0]})
