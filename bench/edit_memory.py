"""The server's memory as edits accumulate: N edits POSTed one after another to a fresh `mend serve` (scoped, the
default), its resident memory every `--every` edits, beside the bytes the edits store. `--mmap-threshold 0` runs it
with glibc's own malloc threshold, which let the heap grow by about 5 MiB per edit (service/heap.py):

    python -m bench.edit_memory -n 300 --threads 2
    python -m bench.edit_memory -n 300 --threads 2 --mmap-threshold 0

`--log DIR` starts the server on a copy of another server's data folder (e.g. a story's, with its 10,000 edits):
the edits are then timed and measured on top of every edit that log holds, beside the same run on an empty log.
"""
from __future__ import annotations

import logging
import shutil
import statistics
from pathlib import Path
from typing import Optional

import psutil
import typer

from editor_core.data import load_records
from service.client import MendClient
from service.embedded_redis import CONF, LOCKFILE, LOGFILE, PIDFILE

from .common import command_line, make_profile, save, serving, setup_logging

log = logging.getLogger("bench.edit_memory")


def main(data: str = typer.Option("zsre:../shared/data/zsre/dev.json", help="zsre:FILE or counterfact:FILE"),
         n: int = typer.Option(300, "-n", help="edits, one per subject, never rolled back"),
         every: int = typer.Option(50, help="read the memory every this many edits"),
         mmap_threshold: Optional[int] = typer.Option(None, help="MEND_MMAP_THRESHOLD of the server (default: "
                                                                 "the service's; 0: glibc's own)"),
         log_dir: Optional[Path] = typer.Option(None, "--log", help="start on a copy of this server data folder "
                                                                    "(its redis/ log is copied, never changed)"),
         smoke: bool = False, model: Optional[str] = None, editor: Optional[str] = None,
         threads: Optional[int] = None, out: Optional[Path] = None) -> None:
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    records = load_records(data, n, one_per_subject=True)
    work = p.out / "edit_memory"
    shutil.rmtree(work, ignore_errors=True)
    if log_dir is not None:  # the log only: the embedded Redis writes its config, pid and socket fresh
        shutil.copytree(log_dir / "redis", work / "data" / "redis",
                        ignore=shutil.ignore_patterns(PIDFILE, LOCKFILE, "*.sock", CONF, LOGFILE))
    settings = {"MEND_METHOD": "scoped"}
    if mmap_threshold is not None:
        settings["MEND_MMAP_THRESHOLD"] = str(mmap_threshold)
    rows, edit_ms, stored = [], [], 0
    with serving(p, work / "data", work / "server.log", **settings) as s, MendClient(s.url, timeout=600.0) as mend:
        server = psutil.Process(s.proc.pid)
        start, held = server.memory_info().rss, mend.list_edits(status="active", limit=1).count
        for i, rec in enumerate(records, 1):
            out = mend.edit(rec.edit.prompt, rec.edit.target, author="edit-memory")
            edit_ms.append(out.elapsed_ms)
            stored += out.bytes
            if i % every == 0 or i == len(records):
                rss = server.memory_info().rss
                rows.append({"edits": i, "server_rss_mib": rss / 2**20, "stored_mib": stored / 2**20,
                             "growth_mib_per_edit": (rss - start) / 2**20 / i,
                             "edit_ms_p50": statistics.median(edit_ms[-every:])})
                log.info("%s", {k: round(v, 2) for k, v in rows[-1].items()})
    name = f"edit_memory_{'glibc' if mmap_threshold == 0 else 'fixed'}_{n}" + (f"_on{held}" if held else "")
    save(p, name, {"data": data, "n": len(records), "mmap_threshold": mmap_threshold, "start_rss_mib": start / 2**20,
                   "edits_held": held, "replay_s": s.replay_seconds(), "edit_ms_p50": statistics.median(edit_ms),
                   "curve": rows}, command_line())


if __name__ == "__main__":
    typer.run(main)
