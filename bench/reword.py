"""What MEND_REWORD costs a user: the latency of /generate for a question that selects a stored edit in other words
than the edit's own, the first time it is asked in those words (the edit is computed for them) and again (kept),
beside the edit prompt itself and the same rephrase before any edit. One client, one request at a time, greedy,
at the service's default settings (scoped edits).

    python -m bench.reword --data counterfact:../shared/data/counterfact/dev.json -n 20
    python -m bench.reword --smoke       # a tiny random model: the mechanics only
"""
from __future__ import annotations

import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Optional

import typer

from editor_core.data import load_records
from service.client import MendClient

from .common import command_line, make_profile, save, serving, setup_logging, summary

log = logging.getLogger("bench.reword")

TOKENS = 8  # enough for a short answer; what differs is the work before the first token


def timed(mend: MendClient, prompt: str) -> float:
    t0 = time.perf_counter()
    mend.generate(prompt, max_new_tokens=TOKENS)
    return (time.perf_counter() - t0) * 1000


def main(data: str = typer.Option("counterfact:../shared/data/counterfact/dev.json",
                                  help="zsre:FILE or counterfact:FILE"),
         n: int = typer.Option(20, "-n", help="records (one per subject, in file order)"),
         smoke: bool = False, model: Optional[str] = None, editor: Optional[str] = None,
         threads: Optional[int] = None, out: Optional[Path] = None) -> None:
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    records = [r for r in load_records(data, n, one_per_subject=True) if r.rephrases]
    work = p.out / "reword"
    shutil.rmtree(work, ignore_errors=True)
    times: dict[str, list[float]] = {k: [] for k in ("unedited_rephrase", "edit", "edit_prompt", "rephrase_first",
                                                      "rephrase_again")}
    with serving(p, work / "data", work / "server.log", MEND_METHOD="scoped") as s, MendClient(s.url) as mend:
        timed(mend, records[0].edit.prompt)  # warm-up
        for rec in records:
            rephrase = rec.rephrases[0]
            times["unedited_rephrase"].append(timed(mend, rephrase))
            t0 = time.perf_counter()
            edit_id = mend.edit(rec.edit.prompt, rec.edit.target).edit_id
            times["edit"].append((time.perf_counter() - t0) * 1000)
            times["edit_prompt"].append(timed(mend, rec.edit.prompt))
            times["rephrase_first"].append(timed(mend, rephrase))
            times["rephrase_again"].append(timed(mend, rephrase))
            mend.rollback(edit_id=edit_id)
    result = {"n": len(records), "max_new_tokens": TOKENS, **{f"{k}_ms": summary(v) for k, v in times.items()},
              "first_over_again_p50_ms": statistics.median(times["rephrase_first"])
              - statistics.median(times["rephrase_again"])}
    log.info("%s", {k: v["p50"] if isinstance(v, dict) else v for k, v in result.items()})
    save(p, "reword", {"data": data, **result}, command_line())


if __name__ == "__main__":
    typer.run(main)
