"""Bulk import (issue 31, item 4): N corrections sent to a running server with `mend import`'s path (POST
/edits/import, 500 a request), and what they cost: edits per second, Redis bytes per edit, server memory, the
first request that selects an imported edit (its delta computed then) against the next one, and a restart.

    python -m bench.bulk_import --n 20000
    python -m bench.bulk_import --smoke     # the tiny random model and a few hundred edits: the mechanics only

The items are bench.million's fill (every real record, one per subject, then generated questions over distinct
names). The server runs at its defaults (scoped edits) on a fresh embedded Redis.
"""
from __future__ import annotations

import logging
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Optional

import redis
import typer

from editor_core.data import load_records
from service.client import MendClient
from service.importing import send
from service.schemas import ImportItem

from .common import command_line, launch, make_profile, save, setup_logging, stop, wait_ready
from .million import DATA, fill

log = logging.getLogger("bench.bulk_import")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def redis_bytes(data_dir: Path) -> dict[str, int]:
    r = redis.Redis(unix_socket_path=str(data_dir / "redis" / "redis.sock"))
    aof = sum(f.stat().st_size for f in (data_dir / "redis").rglob("*.aof"))
    return {"used_memory": int(r.info("memory")["used_memory"]), "aof_bytes": aof}


def main(n: int = typer.Option(20_000, help="corrections to import"),
         batch: int = typer.Option(500, help="items per request"),
         probes: int = typer.Option(20, help="imported prompts generated from, first and second time"),
         data: Path = typer.Option(DATA, help="folder with zsre/ and counterfact/ train.json and dev.json"),
         without_dev: bool = typer.Option(False, help="leave the dev records' edits out of the fill, so that "
                                                      "`bench.says --base` makes them among the imported ones"),
         smoke: bool = False, threads: Optional[int] = None, out: Optional[Path] = None) -> None:
    setup_logging()
    p = make_profile(smoke, threads=threads, out=out)
    n = min(n, 300) if smoke else n
    dev = {r.edit.prompt for kind in ("zsre", "counterfact")
           for r in load_records(f"{kind}:{data / kind / 'dev'}.json", None)} if without_dev else set()
    # A few zsRE answers are empty (nothing to edit): left out, as the data sets' loader leaves them out.
    items = [ImportItem(prompt=q, target=" " + a.strip()) for q, a in fill(n + len(dev) + n // 100, data=data)
             if q not in dev and a.strip()][:n]
    work = p.out / "work" / f"bulk_import_{n}{'_without_dev' if without_dev else ''}"  # `bench.says --base` reads it
    if work.exists():
        shutil.rmtree(work)
    s = launch(p, work, p.out / "work" / "bulk_import.log", MEND_METHOD="scoped")
    try:
        wait_ready(s)
        before = redis_bytes(work)
        rss_before = rss_mib(s.proc.pid)
        with MendClient(s.url, timeout=600.0) as mend:
            t0, statuses = time.perf_counter(), []
            for _, item in send(mend, items, batch, "bench", "bulk import", False, progress=False):
                statuses.append(item.status)
            import_s = time.perf_counter() - t0
            first_ms, second_ms = [], []
            for item in items[: probes]:
                for times in (first_ms, second_ms):
                    t = time.perf_counter()
                    mend.generate(item.prompt, max_new_tokens=8)
                    times.append((time.perf_counter() - t) * 1000)
            rss_after = rss_mib(s.proc.pid)
            after = redis_bytes(work)
    finally:
        stop(s)
    s2 = launch(p, work, p.out / "work" / "bulk_import_restart.log", MEND_METHOD="scoped")
    try:
        restart_s = wait_ready(s2)
        with MendClient(s2.url) as mend:
            active = mend.ready().active_edits
    finally:
        stop(s2)
    imported = statuses.count("imported")
    result = {"items": len(items), "imported": imported, "refused": statuses.count("refused"),
              "other": len(statuses) - imported - statuses.count("refused"), "batch": batch,
              "import_s": import_s, "edits_per_s": len(items) / import_s,
              "redis_bytes_per_edit": (after["used_memory"] - before["used_memory"]) / max(imported, 1),
              "aof_bytes_per_edit": (after["aof_bytes"] - before["aof_bytes"]) / max(imported, 1),
              "server_rss_mib": {"before": rss_before, "after": rss_after,
                                 "per_edit_kib": (rss_after - rss_before) * 1024 / max(imported, 1)},
              "first_selection_ms_p50": statistics.median(first_ms),
              "held_ms_p50": statistics.median(second_ms), "restart_to_ready_s": restart_s,
              "active_after_restart": active, "threads": p.threads, "cores": os.cpu_count()}
    log.info("%s", result)
    save(p, "bulk_import", result, command_line())


if __name__ == "__main__":
    typer.run(main)
