"""Write RESULTS.md from the JSON files the benchmarks left: every number in it comes from a measurement.

A benchmark that has not run yet shows as '—', so the same code writes the skeleton and the full report. A section
none of whose benchmarks left a JSON in the results folder keeps its text from the file being rewritten (and so
does the header, when no issue-5 benchmark did): a run of one benchmark never erases what another one measured.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from .common import OUT, ROOT, setup_logging

log = logging.getLogger("bench.report")

# In run_all.sh's order. The header, the goals and sections 1-6 are issue 5's; reliability is issue 13's.
ISSUE5 = ["edit_latency", "train_throughput", "populate", "generate_throughput", "rollback", "restart", "log_size"]
BF16 = "generate_throughput_bfloat16"  # the same benchmark served in bfloat16 (issue 15 item 3), when it ran
NAMES = ISSUE5 + ["reliability", BF16]
KB = 1000  # the issue's "200 KB" read as 200,000 bytes


def load(folder: Path) -> dict[str, dict]:
    return {n: json.loads((folder / f"{n}.json").read_text()) for n in NAMES if (folder / f"{n}.json").exists()}


def f(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    rows = rows or [["—"] * len(header)]  # the skeleton, before anything was measured
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def pick(r: dict, name: str, fn: Callable[[dict], float]) -> float | None:
    return fn(r[name]["results"]) if name in r else None


def goals(r: dict, before: list[str] = ()) -> list[str]:
    """(goal, measured, verdict) for each goal of the issue, from the measurements; a goal whose benchmark did not
    run keeps its row from `before` (the section as it was)."""
    top = lambda rows, key: max(rows, key=lambda x: x[key])  # noqa: E731 - the row with the largest level
    gen = pick(r, "generate_throughput", most_edits_ratio)
    checks = [
        ("edit ≤ 1.3× one forward+backward (worst batch size, p50)", "≤ 1.30",
         pick(r, "edit_latency", lambda d: max(x["mend_over_floor"] for x in d["sizes"])), lambda v: v <= 1.3, ".2f"),
        ("FT / MEND latency ≥ 20× (worst batch size, p50)", "≥ 20",
         pick(r, "edit_latency", lambda d: min(x["ft_over_mend"] for x in d["sizes"])), lambda v: v >= 20, ".1f"),
        ("generation with 1,000 edits ≥ 0.99× without (worst method and client count)", "≥ 0.99", gen,
         lambda v: v >= 0.99, ".3f"),
        ("rollback ≤ 20 ms at any log length (worst p95, ms)", "≤ 20",
         pick(r, "rollback", lambda d: max(x["rollback_ms"]["p95"] for x in d["rows"])), lambda v: v <= 20, ".1f"),
        ("replay of the longest log ≤ 3 s beyond model load (s)", "≤ 3.0",
         pick(r, "restart", lambda d: top([x for x in d["table"] if x.get("checkpoints", True)], "edits")
              ["beyond_empty_s"]), lambda v: v <= 3, ".2f"),
        ("≤ 200 KB per edit in the log (MEMORY USAGE / XLEN, KB)", "≤ 200",
         pick(r, "log_size", lambda d: d["bytes_per_entry"] / KB), lambda v: v <= 200, ".0f"),
    ]
    kept = {cells[0]: cells for cells in (line.strip("|").split("|") for line in before if line.startswith("| "))}
    kept = {k.strip(): [c.strip() for c in v] for k, v in kept.items()}
    rows = [kept[name] if v is None and name in kept else
            [name, target, f(v, spec), "—" if v is None else ("met" if ok(v) else "**missed**")]
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


def most_edits_ratio(d: dict) -> float:
    """tokens/s with 1,000 edits (scoped or in place) over none, at the same client count: the worst."""
    none = {x["n"]: x["tokens_per_s"] for x in service_rows(d, "none")}
    return min(x["tokens_per_s"] / none[x["n"]] for c in ("scoped", "inplace") for x in service_rows(d, c))


def service_rows(d: dict, config: str, prompts: str = "facts") -> list[dict]:
    return [x for x in d["table"] if (x["kind"], x["config"], x["prompts"]) == ("service", config, prompts)]


def config_names(edits: int) -> dict[str, str]:
    return {"none": "no edits", "scoped": f"{edits:,} scoped edits", "inplace": f"{edits:,} in-place edits"}


def generate_section(r: dict) -> list[str]:
    lines = []
    for name in ("generate_throughput", BF16):
        if name in r:
            lines += generate_tables(r[name])
    return lines or table(["", "tokens/s"], [])


def generate_tables(doc: dict) -> list[str]:
    d, m, p = doc["results"], doc["machine"], doc["profile"]
    s, q = d["sizes"], d["ratios"]
    names, n = config_names(s["edits"]), f"{s['edits']:,}"
    head = [f"`{doc['command'].strip()}`: model `{p['model']}` in {d['dtype']}, temperature {d['temperature']}, "
            f"max_new_tokens {s['new_tokens']}, every request streamed; tokens/s over a {s['window_s']:.0f} s window "
            f"after a {s['ramp_s']:.0f} s ramp, median of {s['rounds']} rounds; {m['cpu']}, {m['cores']} cores "
            f"(shared), torch threads {m['torch_threads']}; {m['date']}, commit {m['commit']}.", ""]
    rows = []
    for x in d["table"]:
        base = next((y for y in d["table"] if (y["kind"], y["config"], y["prompts"], y["n"]) ==
                     (x["kind"], x["config"], x["prompts"], 1)), None)
        who = "service" if x["kind"] == "service" else "`model.generate`"
        rows.append([who, names[x["config"]] if x["kind"] == "service" else "no edits",
                     x["prompts"], str(x["n"]),
                     f(x["tokens_per_s"]), f(base and x["tokens_per_s"] / base["tokens_per_s"], ".2f"),
                     f(x["ttft_p50_ms"], ".0f"), f(x["ttft_p95_ms"], ".0f"), f(x["latency_p50_ms"], ".0f"),
                     f(x["tokens_per_request"]), str(x["requests"])])
    mid, top = q["clients_mid"], q["clients_top"]
    checks = [(f"{mid} clients / 1 client, total tokens/s", "≥ 4", q["clients_mid_over_1"], 4.0),
              (f"{top} clients / 1 client, total tokens/s", "≥ 5", q["clients_top_over_1"], 5.0),
              ("1 client / `model.generate` batch 1", "≥ 1.0", q["single_over_generate"], 1.0),
              (f"{mid} clients / `model.generate` batch {mid}", "(reference)", q["mid_over_generate_batch"], None),
              (f"{n} scoped edits / none, 1 client", "≥ 0.95", q["scoped_over_none_1"], 0.95),
              (f"{n} scoped edits / none, {mid} clients", "≥ 0.95", q["scoped_over_none_mid"], 0.95),
              (f"{n} in-place edits / none, {mid} clients", "(reference)", q["inplace_over_none_mid"], None),
              (f"edited questions: {n} scoped edits / none, {mid} clients", "(reference)",
               q["edited_scoped_over_none_mid"], None),
              (f"questions (short replies): {mid} clients / 1 client", "(reference)", q["questions_mid_over_1"], None),
              (f"questions: {mid} clients / `model.generate` batch {mid}", "(reference)",
               q["questions_mid_over_generate_batch"], None),
              (f"TTFT p95 at {mid} clients / p50 at 1 client", "≤ 2", q["ttft_p95_mid_over_p50_1"], -2.0)]
    verdict = lambda v, t: "—" if v is None or t is None else (  # noqa: E731 - a negative target is an upper bound
        "met" if (v <= -t if t < 0 else v >= t) else "**missed**")
    goals = [[g, target, f(v, ".2f"), verdict(v, t)] for g, target, v, t in checks]
    e = d["edits"]
    edits = [[names[k] if k != "none" else "no edits (scoped)", f(v["idle_ms"]["p50"], ".0f"),
              f(v["idle_ms"]["p95"], ".0f"), f(v["loaded_ms"]["p50"], ".0f"), f(v["loaded_ms"]["p95"], ".0f"),
              str(v["idle_ms"]["n"])] for k, v in e.items()]
    load = next(iter(e.values()))["clients"] if e else mid
    return (head + table(["goal (issue 15)", "target", "measured", "verdict"], goals) + [""]
            + table(["", "edits", "prompts", "clients / batch", "tokens/s", "vs 1", "TTFT p50 ms", "TTFT p95 ms",
                     "request p50 ms", "tokens/request", "requests"], rows) + [""]
            + table(["server", "POST /edit idle p50 ms", "idle p95 ms", f"while {load} clients generate p50 ms",
                     "p95 ms", "edits each"], edits) + [""])


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


def reliability_section(r: dict) -> list[str]:
    cols = ["part", "check", "measured", "expected"]
    if "reliability" not in r:
        return table(cols, [])
    doc = r["reliability"]
    d, m, p = doc["results"], doc["machine"], doc["profile"]
    k, rk, rep, mx, fz = d["kill9"], d["redis_kill"], d["replicas"], d["mixed"], d["fuzz"]
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    zero = lambda n: str(n) if n == 0 else f"**{n}**"  # noqa: E731 - a non-zero loss stands out
    lat = mx["latency_ms"]
    rows = [
        ["1. kill -9 of the server", "cycles; edits acknowledged (201) in all", f"{k['cycles']}; {k['acknowledged']}",
         ""],
        ["", "acknowledged edits lost after the restart (not listed, or not active)", zero(k["lost"]), "0"],
        ["", "half-applied (log positions 1..version ≠ edit + rollback events, or active count off)",
         zero(k["half_applied"]), "0"],
        ["", "edits logged twice once the cut-off ones were retried with their Idempotency-Key",
         zero(k["duplicated"]), "0"],
        ["", "weights hash or version differing between two restarts with no write between",
         zero(k["hash_mismatches"]), "0"],
        ["", "edits the kill cut off; of them already in the log when retried", f"{k['cut_off']}; "
                                                                               f"{k['cut_off_landed']}", ""],
        ["", "restart to /ready, p50 / max s", f"{k['restart_s']['p50']:.1f} / {k['restart_s']['max']:.1f}", ""],
        ["2. kill -9 of the embedded Redis", "kills; edits acknowledged", f"{rk['kills']}; {rk['acknowledged']}", ""],
        ["", "acknowledged edits lost", zero(rk["lost"]), "0"],
        ["", "kills after which edits did not resume by themselves", zero(rk["not_resumed"]), "0"],
        ["", "kill to the first 201 of a request sent after it, s (each kill)",
         ", ".join(f"{x:.2f}" for x in rk["recovery_s"]) or "—", ""],
        ["", "503 answers meanwhile (retried with the same key); no answer", f"{rk['answers_503']}; {rk['no_answer']}",
         ""],
        ["", "other 5xx; half-applied; edits logged twice",
         f"{zero(rk['other_5xx'])}; {zero(rk['half_applied'])}; {zero(rk['duplicated'])}", "0; 0; 0"],
        ["3. two replicas, one Redis", f"edits sent by {rep['clients']} clients; acknowledged",
         f"{rep['edits']}; {rep['acknowledged']}", ""],
        ["", "acknowledged edits missing on either replica", zero(rep["lost"]), "0"],
        ["", "edits logged twice; edit events = distinct keys acknowledged",
         f"{zero(rep['duplicated'])}; {yes(rep['events_equal_keys'])}", "0; yes"],
        ["", "equal weights hashes at equal versions (versions)",
         f"{yes(rep['hashes_equal'])} ({' = '.join(str(v) for v in rep['versions'])})", "yes"],
        ["", "retries after a 503 or no answer (on the other replica)", str(rep["retries"]), ""],
        ["4. mixed clients", f"{mx['clients']} clients for {mx['seconds']:.0f} s: generate / edit / rollback requests",
         f"{mx['generate']} / {mx['edit']} / {mx['rollback']}", ""],
        ["", "errors (5xx or no answer)", zero(mx["errors"]), "0"],
        ["", "torn reads (a version going backwards for its client, or above v0 + writes sent)",
         zero(mx["torn_reads"]), "0"],
        ["", "acknowledged writes the log disagrees with; half-applied",
         f"{zero(mx['lost'])}; {zero(mx['half_applied'])}", "0; 0"],
        ["", "final version = v0 + acknowledged writes", yes(mx["version_accounted"]), "yes"],
        ["", "rollback races: 409 / 404 (expected outcomes)", f"{mx['rollback_409']} / {mx['rollback_404']}", ""],
        ["", "edits refused by the guard (422)", str(mx["refused_422"]), ""],
        ["", "generations at a version whose write was not yet acknowledged (not torn)", str(mx["ahead_of_ack"]), ""],
        ["", "p50 ms: generate / edit / rollback",
         " / ".join(f(lat[op]["p50"], ".0f") if op in lat else "—" for op in ("generate", "edit", "rollback")), ""],
        ["5. schemathesis", f"requests ({fz['examples_per_operation']} examples per operation)", str(fz["requests"]),
         ""],
        ["", "5xx; no response; exit status", f"{zero(fz['server_errors'])}; {zero(fz['no_response'])}; "
                                               f"{zero(fz['exit_code'])}", "0; 0; 0"],
    ]
    here = lambda path: path.removeprefix(f"{ROOT}/")  # noqa: E731 - the tiny model lives under bench/out
    return ([f"`{doc['command'].strip()}` (`bench/reliability.py` says what each check does), model "
             f"`{here(p['model'])}`, editor `{here(p['editor'])}`, MEND_METHOD scoped, embedded Redis; {m['cpu']}, "
             f"{m['cores']} cores, torch threads {m['torch_threads']}; {m['date']}, commit {m['commit']}; "
             f"{d['wall_s'] / 60:.0f} min in all.",
             "", f"schemathesis: `{fz['command']}`", ""] + table(cols, rows))


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


def previous(text: str) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """What a RESULTS.md already holds: its lines before the first section, each section's body by title, and the
    command it lists for each benchmark."""
    head: list[str] = []
    bodies: dict[str, list[str]] = {}
    current = head
    for line in text.splitlines():
        if line.startswith("## "):
            current = bodies.setdefault(line[3:], [])
        else:
            current.append(line)
    strip = lambda lines: "\n".join(lines).strip("\n").split("\n") if "".join(lines).strip() else []  # noqa: E731
    commands = {}
    for line in bodies.get("Commands", []):
        if (found := re.match(r"python -m bench\.(\w+)", line)) and found.group(1) not in commands:
            commands[found.group(1)] = line
    return strip(head), {t: strip(b) for t, b in bodies.items()}, commands


def render(r: dict, smoke: bool, before: str = "") -> str:
    old_head, old, old_commands = previous(before)
    ran = [r[n]["command"].strip() if n in r
           else old_commands.get(n, f"python -m bench.{n}{' --smoke' if smoke else ''}") for n in NAMES if n != BF16]
    if BF16 in r:
        ran.append(r[BF16]["command"].strip())
    sections = [("Goals", ISSUE5, goals), ("1. Edit latency (library: compute_delta + apply)", ["edit_latency"],
                                           edit_section),
                ("HTTP /edit, sequential single edits (building the logs)", ["populate"], populate_section),
                ("2. Generation: the service (continuous batching) against model.generate",
                 ["generate_throughput", BF16], generate_section),
                ("3. Rollback of one edit over HTTP", ["rollback"], rollback_section),
                ("4. Restart: process start to /ready", ["restart"], restart_section),
                ("5. Edit log size", ["log_size"], log_section),
                ("6. Editor training throughput", ["train_throughput"], train_section),
                ("7. Reliability (issue 13): crashes, a dying Redis, two replicas, concurrent clients, fuzzing",
                 ["reliability"], reliability_section)]
    issue5 = {n: r[n] for n in ISSUE5 if n in r}
    # The header names one run's machine, date and commit: rewritten by a run of all of issue 5's benchmarks only.
    head = header(issue5, smoke) if len(issue5) == len(ISSUE5) or not old_head else old_head + [""]
    lines = head + ["## Commands", "", "```bash", *COMMANDS, "# which runs, in order:", *ran, "```", ""]
    for title, names, make in sections:
        fresh = any(n in r for n in names) or title not in old
        made = (goals(r, old.get(title, [])) if make is goals else make(r)) if fresh else old[title]
        lines += [f"## {title}", "", *made, ""]
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
    target.write_text(render(load(folder), smoke, target.read_text() if target.exists() else ""))
    log.info("wrote %s", target)
    print(target.read_text())  # the final table, for the person who ran it


if __name__ == "__main__":
    typer.run(main)
