"""Item 2: /generate tokens per second over HTTP with 0, 100 and 1000 active edits and 1, 4, 16 clients.

One server per edit count runs at once (each on a copy of a prepared log), and the measurements are
interleaved round by round with the level order rotated, so a slow minute on this shared CPU does not
land on one level only. Each measurement is bounded by a request count and a time limit.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
import time
from pathlib import Path
from typing import Optional

import httpx
import typer

from .common import (Profile, Server, command_line, fresh_copy, generation_prompts, launch, make_profile, save,
                     setup_logging, stop, summary, wait_ready)

log = logging.getLogger("bench.generate")


async def one_client(http: httpx.AsyncClient, prompts: list[str], tickets: itertools.count, budget: int,
                     deadline: float, new_tokens: int, done: list[tuple[int, float]]) -> None:
    """Send requests back to back until the shared budget or the deadline runs out."""
    while time.monotonic() < deadline and (i := next(tickets)) < budget:
        t0 = time.perf_counter()
        r = await http.post("/generate", json={"prompt": prompts[i % len(prompts)], "max_new_tokens": new_tokens,
                                               "temperature": 0})
        r.raise_for_status()
        done.append((r.json()["completion_tokens"], (time.perf_counter() - t0) * 1000))


async def load(url: str, clients: int, prompts: list[str], budget: int, seconds: float, new_tokens: int) -> dict:
    done: list[tuple[int, float]] = []
    tickets = itertools.count()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600.0, limits=limits) as http:
        t0 = time.perf_counter()
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(one_client(http, prompts, tickets, budget, deadline, new_tokens, done)
                               for _ in range(clients)))
        wall = time.perf_counter() - t0
    tokens = sum(n for n, _ in done)
    return {"clients": clients, "requests": len(done), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "tokens_per_request": tokens / len(done), "latency_ms": summary([ms for _, ms in done])}


def start_servers(p: Profile) -> dict[int, Server]:
    """All levels start together (their startups overlap) and must report the expected active edits."""
    servers = {n: launch(p, fresh_copy(p, n, p.out / "work" / f"generate-{n}"), p.out / "work" / f"generate-{n}.log")
               for n in p.levels}
    try:
        for n, s in servers.items():
            wait_ready(s)
            active = httpx.get(f"{s.url}/ready", timeout=30).json()["active_edits"]
            if active != n:
                raise RuntimeError(f"server for {n} edits reports {active} active edits")
    except BaseException:
        for s in servers.values():
            stop(s)
        raise
    return servers


def measure(p: Profile, servers: dict[int, Server]) -> list[dict]:
    prompts = generation_prompts(64)
    for s in servers.values():  # warm-up: first-request costs (allocations, lazy imports) are not throughput
        asyncio.run(load(s.url, 1, prompts, 2, 60.0, p.new_tokens))
    rows, levels = [], list(servers)
    for r in range(p.gen_rounds):
        for clients in p.gen_clients:
            for n in levels[r % len(levels):] + levels[:r % len(levels)]:
                row = asyncio.run(load(servers[n].url, clients, prompts, p.gen_requests, p.gen_seconds, p.new_tokens))
                rows.append({"round": r, "edits": n, **row})
                log.info("round %d, %d edits, %d clients: %.1f tokens/s (%d requests)", r, n, clients,
                         row["tokens_per_s"], row["requests"])
    return rows


def aggregate(p: Profile, rows: list[dict]) -> list[dict]:
    """Median over rounds per (edits, clients), and its ratio to the same clients with no edit."""
    out = []
    for clients in p.gen_clients:
        base = None
        for n in p.levels:
            mine = [r for r in rows if r["edits"] == n and r["clients"] == clients]
            tps = statistics.median(r["tokens_per_s"] for r in mine)
            base = tps if n == 0 else base
            out.append({"edits": n, "clients": clients, "tokens_per_s": tps, "rounds": len(mine),
                        "vs_no_edits": tps / base if base else None,
                        "latency_p50_ms": statistics.median(r["latency_ms"]["p50"] for r in mine),
                        "tokens_per_request": statistics.fmean(r["tokens_per_request"] for r in mine)})
    return out


def main(smoke: bool = typer.Option(False, help="tiny random model, tiny counts"),
         model: Optional[str] = None, editor: Optional[str] = None, threads: Optional[int] = None,
         out: Optional[Path] = None) -> None:
    """Tokens/s of /generate per edit count and client count (needs `python -m bench.populate` first)."""
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    servers = start_servers(p)
    try:
        rows = measure(p, servers)
    finally:
        for s in servers.values():
            stop(s)
    save(p, "generate_throughput", {"rows": rows, "table": aggregate(p, rows), "new_tokens": p.new_tokens},
         command_line())


if __name__ == "__main__":
    typer.run(main)
