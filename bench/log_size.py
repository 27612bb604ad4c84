"""Item 5: bytes per edit in the log and the Redis memory of a log with 1000 edits.

Reads a copy of the prepared log with the same embedded redis-server the service runs (no model needed):
`MEMORY USAGE` of the stream (exact: SAMPLES 0) over XLEN, each entry's delta field (which is exactly
`LowRankDelta.to_bytes()`), `INFO memory` against an empty server, and the append-only file on disk.
"""
from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Optional

import redis
import typer

from editor_core import LowRankDelta
from service.embedded_redis import EmbeddedRedis

from .common import Profile, command_line, fresh_copy, make_profile, save, setup_logging

log = logging.getLogger("bench.log_size")


def entry_sizes(client: redis.Redis, key: str) -> dict:
    """Per-entry field sizes, read in pages so a gigabyte stream never sits in one reply."""
    delta, body, rank, raw, first = [], [], [], [], None
    last = "-"
    while rows := client.xrange(key, min=last, count=100):
        for _, fields in rows:
            if fields.get(b"type") == b"edit":
                meta = json.loads(fields[b"body"])
                delta.append(len(fields[b"delta"]))
                body.append(len(fields[b"body"]))
                rank.append(meta["rank"])
                raw.append(meta["bytes"])
                first = first or fields[b"delta"]
        last = "(" + rows[-1][0].decode()
    # The stored field is to_bytes() itself: re-encoding the parsed delta must give the same length.
    same = first is not None and len(LowRankDelta.from_bytes(first).to_bytes()) == len(first)
    return {"edits": len(delta), "delta_bytes_mean": statistics.fmean(delta), "delta_bytes_max": max(delta),
            "body_bytes_mean": statistics.fmean(body), "rank_mean": statistics.fmean(rank), "rank_max": max(rank),
            "factor_bytes_mean": statistics.fmean(raw), "to_bytes_roundtrip_same_length": same}


def memory(client: redis.Redis) -> dict:
    info = client.info("memory")
    return {k: info[k] for k in ("used_memory", "used_memory_dataset", "used_memory_rss")}


def aof_bytes(redis_dir: Path) -> int:
    return sum(f.stat().st_size for f in redis_dir.rglob("*") if f.is_file() and "appendonly" in str(f))


def measure(p: Profile, n: int) -> dict:
    empty = EmbeddedRedis(fresh_copy(p, 0, p.out / "work" / "logsize-empty") / "redis").start()
    try:
        baseline = memory(redis.Redis.from_url(empty.url))
    finally:
        empty.stop()
    data = fresh_copy(p, n, p.out / "work" / f"logsize-{n}")
    server = EmbeddedRedis(data / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        (key,) = [k.decode() for k in client.scan_iter(match="mend:log:*")]
        xlen, usage = client.xlen(key), client.memory_usage(key, samples=0)
        out = {"log_length": xlen, "stream_memory_bytes": usage, "bytes_per_entry": usage / xlen,
               **entry_sizes(client, key), "redis": memory(client), "redis_empty": baseline}
    finally:
        server.stop()
    out["aof_bytes"] = aof_bytes(data / "redis")
    return out


def main(smoke: bool = typer.Option(False, help="tiny random model, tiny counts"),
         model: Optional[str] = None, editor: Optional[str] = None, threads: Optional[int] = None,
         out: Optional[Path] = None) -> None:
    """Bytes per edit and Redis memory of the longest prepared log (needs `python -m bench.populate` first)."""
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    res = measure(p, max(p.log_lengths))
    log.info("%d entries: %.0f bytes each in Redis, delta %.0f bytes", res["log_length"], res["bytes_per_entry"],
             res["delta_bytes_mean"])
    save(p, "log_size", res, command_line())


if __name__ == "__main__":
    typer.run(main)
