"""Write RESULTS.md from the JSON files the benchmarks left: every number in it comes from a measurement.

A benchmark that has not run yet shows as '—', so the same code writes the skeleton and the full report.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from .common import OUT, ROOT, setup_logging

log = logging.getLogger("bench.report")

# In run_all.sh's order.
NAMES = ["edit_latency", "train_throughput", "populate", "generate_throughput", "rollback", "restart", "log_size"]
KB = 1000  # the "200 KB" read as 200,000 bytes


def load(folder: Path) -> dict[str, dict]:
    return {n: json.loads((folder / f"{n}.json").read_text()) for n in NAMES if (folder / f"{n}.json").exists()}


def f(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    rows = rows or [["—"] * len(header)]  # the skeleton, before anything was measured
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def pick(r: dict, name: str, fn: Callable[[dict], float]) -> float | None:
    return fn(r[name]["results"]) if name in r else None


def goals(r: dict) -> list[str]:
    """(goal, measured, verdict) for each goal of the issue, from the measurements."""
    top = lambda rows, key: max(rows, key=lambda x: x[key])  # noqa: E731 - the row with the largest level
    gen = pick(r, "generate_throughput", lambda d: min(x["vs_no_edits"] for x in d["table"]
                                                      if x["edits"] == max(y["edits"] for y in d["table"])))
    checks = [
        ("edit ≤ 1.3× one forward+backward (worst batch size, p50)", "≤ 1.30",
         pick(r, "edit_latency", lambda d: max(x["mend_over_floor"] for x in d["sizes"])), lambda v: v <= 1.3, ".2f"),
        ("FT / MEND latency ≥ 20× (worst batch size, p50)", "≥ 20",
         pick(r, "edit_latency", lambda d: min(x["ft_over_mend"] for x in d["sizes"])), lambda v: v >= 20, ".1f"),
        ("generation with the most edits ≥ 0.99× without (worst client count)", "≥ 0.99", gen,
         lambda v: v >= 0.99, ".3f"),
        ("rollback ≤ 20 ms at any log length (worst p95, ms)", "≤ 20",
         pick(r, "rollback", lambda d: max(x["rollback_ms"]["p95"] for x in d["rows"])), lambda v: v <= 20, ".1f"),
        ("replay of the longest log ≤ 3 s beyond model load (s)", "≤ 3.0",
         pick(r, "restart", lambda d: top([x for x in d["table"] if x.get("checkpoints", True)], "edits")
              ["beyond_empty_s"]), lambda v: v <= 3, ".2f"),
        ("≤ 200 KB per edit in the log (MEMORY USAGE / XLEN, KB)", "≤ 200",
         pick(r, "log_size", lambda d: d["bytes_per_entry"] / KB), lambda v: v <= 200, ".0f"),
    ]
    rows = [[name, target, f(v, spec), "—" if v is None else ("met" if ok(v) else "**missed**")]
            for name, target, v, ok, spec in checks]
    return table(["goal", "target", "measured", "verdict"], rows)


def edit_section(r: dict) -> list[str]:
    sizes = r["edit_latency"]["results"]["sizes"] if "edit_latency" in r else []
    rows = [[str(x["batch"]), f(x["mend_ms"]["p50"]), f(x["mend_ms"]["p95"]), f(x["floor_ms"]["p50"]),
             f(x["floor_ms"]["p95"]), f(x["mend_over_floor"], ".2f"), f(x["ft_ms"]["p50"]), f(x["ft_ms"]["p95"]),
             f(x.get("ft_over_floor"), ".1f"), f(x["ft_over_mend"], ".1f"), str(x["mend_ms"]["n"]),
             str(x["ft_ms"]["n"])] for x in sizes]
    return table(["edits per batch", "MEND p50 ms", "MEND p95 ms", "fwd+bwd p50 ms", "fwd+bwd p95 ms",
                  "MEND / fwd+bwd", "FT p50 ms", "FT p95 ms", "FT / fwd+bwd", "FT / MEND", "MEND runs", "FT runs"],
                 rows)


def populate_section(r: dict) -> list[str]:
    d = r.get("populate", {}).get("results")
    rows = [] if d is None else [[str(d["edits"]), str(d["rejected"]), f(d["edits_per_s"], ".2f"),
                                  f(d["client_ms"]["p50"]), f(d["client_ms"]["p95"]), f(d["server_elapsed_ms"]["p50"])]]
    return table(["edits logged", "refused by the guard (422)", "edits/s", "client p50 ms", "client p95 ms",
                  "server elapsed_ms p50"], rows)


def generate_section(r: dict) -> list[str]:
    d = r.get("generate_throughput", {}).get("results", {"table": [], "new_tokens": "—"})
    rows = [[str(x["edits"]), str(x["clients"]), f(x["tokens_per_s"]), f(x["vs_no_edits"], ".3f"),
             f(x["latency_p50_ms"], ".0f"), f(x["tokens_per_request"]), str(x["rounds"])] for x in d["table"]]
    return ([f"max_new_tokens {d['new_tokens']}, greedy; median over rounds.", ""]
            + table(["active edits", "clients", "tokens/s", "vs 0 edits", "request p50 ms", "tokens/request",
                     "rounds"], rows))


def rollback_section(r: dict) -> list[str]:
    got = r["rollback"]["results"]["rows"] if "rollback" in r else []
    rows = [[str(x["log_length"]), f(x["rollback_ms"]["p50"]), f(x["rollback_ms"]["p95"]), f(x["rollback_ms"]["max"]),
             str(x["rollback_ms"]["n"])] for x in got]
    return table(["log length", "p50 ms", "p95 ms", "max ms", "rollbacks"], rows)


def restart_section(r: dict) -> list[str]:
    got = r["restart"]["results"]["table"] if "restart" in r else []
    rows = [[str(x["edits"]), "on" if x.get("checkpoints", True) else "off (full replay)", f(x["ready_s"], ".2f"),
             f(x["beyond_empty_s"], ".2f"), f(x["replay_s"], ".2f"), str(x["starts"])] for x in got]
    return table(["edits in log", "checkpoint", "start → /ready s (median)", "beyond empty log s",
                  "replay s (server log)", "starts"], rows)


def log_section(r: dict) -> list[str]:
    if "log_size" not in r:
        return table(["quantity", "value"], [])
    d = r["log_size"]["results"]
    rows = [["stream entries (XLEN)", str(d["log_length"])],
            ["MEMORY USAGE of the stream / XLEN", f"{d['bytes_per_entry'] / KB:.1f} KB"],
            ["len(delta.to_bytes()) mean / max",
             f"{d['delta_bytes_mean'] / KB:.1f} / {d['delta_bytes_max'] / KB:.1f} KB"],
            ["raw factor bytes mean (LowRankDelta.nbytes)", f"{d['factor_bytes_mean'] / KB:.1f} KB"],
            ["JSON body mean", f"{d['body_bytes_mean']:.0f} B"],
            ["delta rank mean / max (tokens carrying gradient)", f"{d['rank_mean']:.1f} / {d['rank_max']}"],
            ["Redis used_memory (empty server)", f"{d['redis']['used_memory'] / 1e6:.1f} MB "
                                                 f"({d['redis_empty']['used_memory'] / 1e6:.1f} MB)"],
            ["Redis used_memory_rss", f"{d['redis']['used_memory_rss'] / 1e6:.1f} MB"],
            ["append-only file on disk", f"{d['aof_bytes'] / 1e6:.1f} MB"]]
    return table(["quantity", "value"], rows)


def train_section(r: dict) -> list[str]:
    header = ["prefix cache", "steps", "steps/s", "steady steps/s (2nd half)"]
    if "train_throughput" not in r:
        return table(header, [])
    d = r["train_throughput"]["results"]
    rows = [["on" if x["prefix_cache"] else "off", str(x["steps"]), f(x["steps_per_s"], ".3f"),
             f(x["steady_steps_per_s"], ".3f")] for x in d["rows"]]
    return ([f"pool of {d['pool']} records (max_records), editor rank {d['rank']}, batch 4; "
             f"steady-state speed-up with the cache: {d['speedup']:.2f}×", ""]
            + table(header, rows))


def header(r: dict, smoke: bool) -> list[str]:
    first = next(iter(r.values()), None)
    lines = ["# Benchmark results (issue 5)", ""]
    if smoke:
        lines += ["**SMOKE RUN: tiny random model and tiny counts. These numbers test the scripts; they are "
                  "not the benchmark.**", ""]
    if first is None:
        return lines + ["No measurements yet: `bench/run_all.sh` runs every benchmark at full size and rewrites "
                        "this file from what it measured.", ""]
    m, p = first["machine"], first["profile"]
    return lines + [f"- machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}",
                    f"- date: {m['date']} (first benchmark), commit {m['commit']}",
                    f"- model `{p['model']}`, editor `{p['editor']}`", ""]


COMMANDS = ["bench/run_all.sh            # everything at full size, then this file",
            "bench/run_all.sh --smoke    # tiny sizes (CI); report under bench/out/smoke/"]


def render(r: dict, smoke: bool) -> str:
    ran = [f"python -m bench.{n}{' --smoke' if smoke else ''}" for n in NAMES]
    ran = [r[n]["command"] if n in r else c for n, c in zip(NAMES, ran)]
    sections = [("Goals", goals(r)), ("1. Edit latency (library: compute_delta + apply)", edit_section(r)),
                ("HTTP /edit, sequential single edits (building the logs)", populate_section(r)),
                ("2. /generate throughput over HTTP", generate_section(r)),
                ("3. Rollback of one edit over HTTP", rollback_section(r)),
                ("4. Restart: process start to /ready", restart_section(r)),
                ("5. Edit log size", log_section(r)),
                ("6. Editor training throughput", train_section(r))]
    lines = header(r, smoke) + ["## Commands", "", "```bash", *COMMANDS, "# which runs, in order:", *ran, "```", ""]
    for title, body in sections:
        lines += [f"## {title}", "", *body, ""]
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


def main(smoke: bool = typer.Option(False, help="report the smoke results (bench/out/smoke)"),
         results: Optional[Path] = typer.Option(None, help="folder of the JSON results"),
         out_file: Optional[Path] = typer.Option(None, help="default: bench/RESULTS.md, or the smoke folder")) -> None:
    """Render RESULTS.md from the benchmarks' JSON files."""
    setup_logging()
    folder = results or OUT / ("smoke" if smoke else "full")
    target = out_file or (folder / "RESULTS.md" if smoke else ROOT / "bench" / "RESULTS.md")
    target.write_text(render(load(folder), smoke))
    log.info("wrote %s", target)
    print(target.read_text())  # the final table, for the person who ran it


if __name__ == "__main__":
    typer.run(main)
