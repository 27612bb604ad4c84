"""Item 4: restart time, process start to the first 200 from /ready, with 0, 100 and 1000 edits in the log.

The cost beyond model load is the difference to the same start with an empty log: it includes Redis loading
its append-only file, reading the stream, restoring the weights checkpoint and re-applying the events after it.
The prepared logs end on a checkpoint (their lengths are multiples of MEND_CHECKPOINT_EVERY), so the longest
log is also started with checkpoints off (a full replay): the worst case, a tail of EVERY-1 events, costs
about (EVERY-1)/1000 of that replay beyond the checkpointed start. The runtime's own logged replay time
is reported beside it. Each log is a fresh copy (made before the clock starts), so the file is in the page
cache, as it is when a crashed server is restarted on the same machine.
"""
from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Optional

import httpx
import typer

from .common import Profile, command_line, fresh_copy, launch, make_profile, save, setup_logging, stop, wait_ready

log = logging.getLogger("bench.restart")


def start_once(p: Profile, n: int, checkpoints: bool = True) -> dict:
    data = fresh_copy(p, n, p.out / "work" / f"restart-{n}")
    extra = {} if checkpoints else {"MEND_CHECKPOINT_EVERY": "0"}
    s = launch(p, data, p.out / "work" / f"restart-{n}.log", **extra)
    try:
        ready_s = wait_ready(s)
        active = httpx.get(f"{s.url}/ready", timeout=30).json()["active_edits"]
    finally:
        stop(s)
    if active != n:
        raise RuntimeError(f"restart with {n} edits came back with {active} active")
    return {"edits": n, "ready_s": ready_s, "replay_s": s.replay_seconds(), "checkpoints": checkpoints}


def aggregate(p: Profile, runs: list[dict]) -> list[dict]:
    rows = []
    for n, ckpt in [(n, True) for n in p.levels] + [(max(p.levels), False)]:
        mine = [r for r in runs if r["edits"] == n and r.get("checkpoints", True) == ckpt]
        rows.append({"edits": n, "checkpoints": ckpt, "ready_s": statistics.median(r["ready_s"] for r in mine),
                     "replay_s": statistics.median(r["replay_s"] for r in mine if r["replay_s"] is not None),
                     "starts": len(mine)})
    for r in rows:
        r["beyond_empty_s"] = r["ready_s"] - rows[0]["ready_s"]
    return rows


def main(smoke: bool = typer.Option(False, help="tiny random model, tiny counts"),
         model: Optional[str] = None, editor: Optional[str] = None, threads: Optional[int] = None,
         out: Optional[Path] = None) -> None:
    """Start-to-ready per edit count, levels interleaved per repeat (needs `python -m bench.populate` first)."""
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    runs = []
    for r in range(p.restart_repeats):
        for n in p.levels:
            runs.append(start_once(p, n))
            log.info("repeat %d, %d edits: ready after %.2f s (replay %.2f s)", r, n, runs[-1]["ready_s"],
                     runs[-1]["replay_s"] if runs[-1]["replay_s"] is not None else float("nan"))
        runs.append(start_once(p, max(p.levels), checkpoints=False))
        log.info("repeat %d, %d edits, checkpoints off: ready after %.2f s", r, max(p.levels), runs[-1]["ready_s"])
    save(p, "restart", {"runs": runs, "table": aggregate(p, runs)}, command_line())


if __name__ == "__main__":
    typer.run(main)
