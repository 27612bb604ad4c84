"""Item 3: latency of rolling back one edit over HTTP, at log lengths 10, 100 and 1000.

The edits rolled back are spread over the log (oldest to newest), since a cost that grew with an edit's age
or with the events after it would show there. One untimed rollback first warms the path; the log never
empties, because rolling back the last active edit takes another path (restoring the base copy).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import httpx
import typer

from .common import Profile, command_line, fresh_copy, make_profile, save, serving, setup_logging, summary

log = logging.getLogger("bench.rollback")


def spread_ids(http: httpx.Client, n_log: int, k: int) -> list[str]:
    """k active edit ids at evenly spaced positions of the log."""
    ids = []
    for i in range(k):
        page = http.get("/edits", params={"status": "active", "offset": i * (n_log - 1) // max(k - 1, 1),
                                         "limit": 1})
        page.raise_for_status()
        ids.append(page.json()["data"][0]["edit_id"])
    return list(dict.fromkeys(ids))


def rollback_ms(http: httpx.Client, edit_id: str) -> float:
    t0 = time.perf_counter()
    r = http.post("/rollback", json={"edit_id": edit_id, "author": "bench"})
    r.raise_for_status()
    return (time.perf_counter() - t0) * 1000


def measure_length(p: Profile, n: int) -> dict:
    k = max(1, min(p.rollbacks, n - 2))  # + 1 warm-up, and at least one edit stays active
    data = fresh_copy(p, n, p.out / "work" / f"rollback-{n}")
    with serving(p, data, p.out / "work" / f"rollback-{n}.log") as s, httpx.Client(base_url=s.url, timeout=120) as http:
        ids = spread_ids(http, n, k + 1)
        rollback_ms(http, ids[-1])
        ms = [rollback_ms(http, i) for i in ids[:-1]]
    log.info("log length %d: rollback p50 %.1f ms, max %.1f ms", n, summary(ms)["p50"], max(ms))
    return {"log_length": n, "rollback_ms": summary(ms)}


def main(smoke: bool = typer.Option(False, help="tiny random model, tiny counts"),
         model: Optional[str] = None, editor: Optional[str] = None, threads: Optional[int] = None,
         out: Optional[Path] = None) -> None:
    """Rollback latency per log length (needs `python -m bench.populate` first)."""
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    save(p, "rollback", {"rows": [measure_length(p, n) for n in p.log_lengths]}, command_line())


if __name__ == "__main__":
    typer.run(main)
