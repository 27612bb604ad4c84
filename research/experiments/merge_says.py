"""One table row from several `bench.says --samples` files of the same code and split (a run extended with --skip):
the mean of every score over all their records, and the p50 of the edit times the samples carry (samples written
before bench.says kept `edit_ms` have none).

    python research/experiments/merge_says.py research/results/samples/zsre200_bank.json research/results/samples/zsre200_500_bank.json
"""
import json
import statistics
import sys

from editor_core.evaluate import mean_metrics

SCORES = ("prompt", "rephrase", "chat", "chat_rephrase", "unchanged", "repeat", "repeat_answer_in", "repeat_unedited",
          "entropy", "entropy_answer_in", "entropy_unedited")
rows, prompts = [], set()
for path in sys.argv[1:]:
    for s in json.load(open(path)):
        if s["edit_prompt"] in prompts:
            sys.exit(f"{s['edit_prompt']!r} is in two files: these runs overlap")
        prompts.add(s["edit_prompt"])
        rows.append(s)
means = mean_metrics([{k: r[k] for k in SCORES if k in r} for r in rows])
ms = [r["edit_ms"] for r in rows if "edit_ms" in r]
print(json.dumps({"n": len(rows), **{k: round(v, 4) for k, v in means.items()},
                  "edit_ms_p50": round(statistics.median(ms), 1) if ms else None, "edit_ms_n": len(ms)}, indent=1))
