"""Prepare the edit logs the service benchmarks start from (10, 100, 1000 edits), by POSTing real /edit
requests one at a time to a real server; what that costs (edits/s over HTTP) is itself a measurement.

One data folder grows in steps; between steps the server is stopped and the folder copied, so every later
benchmark starts a server on a copy of a log that a real server wrote.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Optional

import httpx
import typer

from .common import Profile, command_line, edit_pairs, log_dir, make_profile, save, serving, setup_logging, summary

log = logging.getLogger("bench.populate")


def post_edits(url: str, pool: list[dict], want: int, force: bool) -> dict:
    """Sequential single edits from `pool` until `want` are accepted. An edit the guard refuses (422) is counted
    and skipped: its cost is part of what editing costs, but it is not in the log."""
    client_ms, server_ms, used, rejected = [], [], 0, 0
    with httpx.Client(base_url=url, timeout=600.0) as http:
        t0 = time.perf_counter()
        while len(client_ms) < want:
            if used == len(pool):
                raise RuntimeError(f"{rejected} of {used} edits refused by the guard: not enough edits for the log;"
                                   f" rerun with --force (the guard still runs and records its measurement)")
            t = time.perf_counter()
            r = http.post("/edit", json={**pool[used], "author": "bench", "note": "populate", "force": force})
            used += 1
            if r.status_code == 422:
                rejected += 1
                continue
            r.raise_for_status()
            client_ms.append((time.perf_counter() - t) * 1000)
            server_ms.append(r.json()["elapsed_ms"])
        return {"client_ms": client_ms, "server_ms": server_ms, "wall": time.perf_counter() - t0, "used": used,
                "rejected": rejected}


def build_logs(p: Profile, force: bool) -> dict:
    work = p.out / "logs" / "building"
    shutil.rmtree(work, ignore_errors=True)
    pool = edit_pairs(4 * max(p.log_lengths))  # room for refused edits; zsRE dev has 2000 distinct ones
    done, used, rejected, client_ms, server_ms, wall = 0, 0, 0, [], [], 0.0
    for n in sorted(p.log_lengths):
        with serving(p, work, p.out / "logs" / f"server-populate-{n}.log") as s:
            got = post_edits(s.url, pool[used:], n - done, force)
        client_ms, server_ms = client_ms + got["client_ms"], server_ms + got["server_ms"]
        wall, done, used, rejected = wall + got["wall"], n, used + got["used"], rejected + got["rejected"]
        dest = log_dir(p, n)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(work, dest, ignore=shutil.ignore_patterns("redis.pid", "redis.sock"))
        (dest / "done.json").write_text(json.dumps({"edits": n, "model": p.model, "editor": p.editor}) + "\n")
        log.info("log with %d edits ready at %s (%.2f edits/s so far, %d refused)", n, dest, done / wall, rejected)
    shutil.rmtree(work, ignore_errors=True)
    return {"edits": done, "edits_per_s": done / wall, "attempts": used, "rejected": rejected, "forced": force,
            "client_ms": summary(client_ms), "server_elapsed_ms": summary(server_ms)}


def main(smoke: bool = typer.Option(False, help="tiny random model, tiny counts"),
         model: Optional[str] = None, editor: Optional[str] = None, threads: Optional[int] = None,
         out: Optional[Path] = None,
         force: bool = typer.Option(False, help="send force: true (the guard still measures every edit)")) -> None:
    """POST /edit until the logs of every prepared length exist; report edits/s."""
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    save(p, "populate", build_logs(p, force), command_line())


if __name__ == "__main__":
    typer.run(main)
