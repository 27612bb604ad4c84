"""The lifelong story through the running service (issue 7): POST /edit K records one after another, never rolled
back, and re-check every edit so far at 10, 100, 300, 1000 ... over HTTP (POST /score), with the metrics of
`mend eval --sequential K` on the same records, so the two can be compared line by line.

    python -m bench.lifelong_story --data zsre:../shared/data/zsre/dev.json -k 1000 \
        --library research/results/zsre_seq1000_mend-scoped.json

Beyond the dev split (zsRE dev has 1,155 subjects), `--fill` tops the story up from another file: its records
whose subject the story has not edited yet, one per subject, then its other questions about those subjects (never
a subject of `--data`). `--recheck N` rescores only the first N edits at each point; with N at most the records of
`--data`, a 10,000-edit story checks held-out records only, under all the edits made after them:

    python -m bench.lifelong_story --data zsre:../shared/data/zsre/dev.json --fill zsre:../shared/data/zsre/train.json \
        -k 10000 --recheck 1000 --says 40

Each point also gives the server's memory (resident set of `mend serve` and its embedded Redis) and the edit
time (p50 of the last 50 edits); the result is written after every point, so a story cut short keeps its curve,
and `--resume` goes on with it: from where its log ends, on a server that replayed the log (`resumed_at` lists
the edits at each resume; `edit_ms` and `wall_s` leave out edits logged after the last point written).

What a user sees comes first: at every curve point the first `--says N` edits (the oldest, most exposed to the
edits after them) are checked by greedy /generate as bench/says.py checks them (`says_*`: the reply starts with
the new answer, to the prompt, its rephrases and in chat; unrelated replies unchanged; repetition and entropy of
64-token replies, beside the unedited model's). `--says-end N` checks N of the rechecked edits so, spread over
the edit order, once the story is complete (`says_end`; the replies in `<name>_says_end_samples.json`); given
with `--resume` to a complete story, it runs that check alone on a server that replays the story's log:

    python -m bench.lifelong_story ... -k 10000 --recheck 1000 --says 40 --resume --says-end 200

The teacher-forced metrics are the library's own: `editor_core.evaluate.record_metrics` on scores from POST /score
instead of the model (`loc` compares argmax answer tokens with those of the unedited model, read before the
first edit). `loc_kl` needs full distributions, which /score does not serve. The guard runs as configured
(BENCH_GUARD_CANARIES, see common.launch); an edit it refuses is counted and left out of the story.
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil
import typer

from editor_core.data import EditRecord, EditRequest, load_records
from editor_core.evaluate import (
    Scorer,
    loc_reference,
    mean_metrics,
    record_metrics,
)
from editor_core.scoring import TargetScore
from service.client import MendClient, Rejected
from service.settings import DEFAULT_CANARIES

from .common import command_line, make_profile, save, serving, setup_logging
from .says import before, check, checks, references, spread

log = logging.getLogger("bench.lifelong_story")
CURVE = (10, 25, 50, 100, 300, 1000, 3000, 5000, 10000)
PAGE = 64  # the most items one /score takes
AUTHOR = "lifelong-story"


def http_scorer(mend: MendClient) -> Scorer:
    """editor_core.evaluate's Scorer over POST /score, so `record_metrics` itself computes the story's metrics.
    /score serves no full distributions: no log-probs, hence no `loc_kl`."""
    def run(reqs: list[EditRequest], keep_logp: bool = False) -> list[TargetScore]:
        pages = [mend.score([{"prompt": q.prompt, "target": q.target} for q in reqs[i:i + PAGE]])
                 for i in range(0, len(reqs), PAGE)]
        return [TargetScore(s.logprob, s.exact, tuple(s.argmax_ids)) for page in pages for s in page.scores]

    return run


def recheck(mend: MendClient, recs: list[EditRecord], refs: list[list[TargetScore]]) -> dict[str, float]:
    score_fn = http_scorer(mend)
    return mean_metrics([record_metrics(score_fn, rec, ref) for rec, ref in zip(recs, refs)])


def greedy(mend: MendClient, prompts: list[str], tokens: int = 4) -> list[str]:
    return [mend.generate(q, max_new_tokens=tokens).text for q in prompts]


def generated(mend: MendClient, recs: list[EditRecord], refs: list[dict]) -> dict[str, float]:
    """bench/says.py's checks of these edited records, averaged, each key prefixed `says_`."""
    rows = [check(mend, r, ref)[0] for r, ref in zip(recs, refs)]  # (verdicts, sample): the verdicts
    return {f"says_{k}": v for k, v in mean_metrics(rows).items()}


def fill(records: list[EditRecord], more: list[EditRecord], k: int) -> list[EditRecord]:
    """`records`, then `more`'s records of subjects not in `records` until there are k: one per subject first, then
    other questions (distinct prompts) about the subjects so filled."""
    held = {r.subject for r in records}
    pool = [r for r in more if r.subject not in held]
    seen, first, rest = set(), [], []
    for r in pool:
        (rest if r.subject in seen else first).append(r)
        seen.add(r.subject)
    asked = {r.edit.prompt for r in records}
    out = list(records)
    for r in first + rest:
        if len(out) >= k:
            break
        if r.edit.prompt not in asked:
            asked.add(r.edit.prompt)
            out.append(r)
    return out


def resident_mb(pid: int) -> float:
    """Resident memory of a process and all its children (the server and its embedded Redis), in MiB."""
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


@dataclass
class Before:
    """The unedited model, read before the first edit: scores of the rechecked records, replies of the watched
    ones, and the canaries' answers."""
    refs: list[list[TargetScore]]
    says: list[dict]
    canaries: list[str]


def read_before(url: str, checked: list[EditRecord], watched: list[EditRecord], canaries: list[str]) -> Before:
    with MendClient(url, timeout=600.0) as mend:
        return Before(loc_reference(http_scorer(mend), checked), [before(mend, r) for r in watched],
                      greedy(mend, canaries))


def logged(url: str, records: list[EditRecord]) -> list[int]:
    """Which of `records` the server's log holds as active edits, oldest first (a resumed story's edits so far)."""
    index = {r.edit.prompt: i for i, r in enumerate(records)}
    out: list[int] = []
    with MendClient(url, timeout=600.0) as mend:
        while True:
            page = mend.list_edits(status="active", offset=len(out), limit=500, author=AUTHOR)
            for e in page.data:
                if e.requests[0].prompt not in index:
                    raise ValueError(f"the log holds an edit of {e.requests[0].prompt!r}, not of this story")
                out.append(index[e.requests[0].prompt])
            if len(out) >= page.count or not page.data:
                if out != sorted(set(out)):
                    raise ValueError("the log's edits are not this story's records in order")
                return out


def run_story(url: str, records: list[EditRecord], force: bool, canaries: list[str], ref: Before,
              pid: int | None = None, progress: Callable[[dict], None] = lambda partial: None,
              prior: dict | None = None) -> dict:
    """Edit `records` in order and check at every curve point: the first len(ref.refs) records by score, the
    first len(ref.says) by generation. `prior`: a story cut short (its saved partial result, with `done`, the
    indices of the records its log holds): it goes on after the last of them."""
    prior = prior or {}
    done = list(prior.get("done", []))
    refused = (done[-1] + 1 - len(done)) if done else 0
    points, edit_ms = list(prior.get("curve", [])), list(prior.get("edit_ms", []))
    t0 = time.perf_counter() - (points[-1]["wall_s"] if points else 0.0)
    resumed_at = list(prior.get("resumed_at", [])) + ([len(done)] if prior else [])
    with MendClient(url, timeout=600.0) as mend:
        def checkpoint() -> None:
            idx = [j for j in done if j < len(ref.refs)]
            watched = [j for j in done if j < len(ref.says)]
            point = {"edits": len(done),
                     **generated(mend, [records[j] for j in watched], [ref.says[j] for j in watched]),
                     **recheck(mend, [records[j] for j in idx], [ref.refs[j] for j in idx]),
                     "rechecked": len(idx), "wall_s": time.perf_counter() - t0}
            if edit_ms:
                point["edit_ms_p50_last"] = statistics.median(edit_ms[-min(len(edit_ms), 50):])
            if pid is not None:
                point["resident_mb"] = resident_mb(pid)
            points.append(point)
            log.info("after %d edits: %s", len(done), {k: round(v, 3) for k, v in point.items()})
            progress({"curve": points, "refused": refused, "edit_ms": edit_ms, "done": done, "complete": False,
                      "resumed_at": resumed_at})

        if len(done) in CURVE and (not points or points[-1]["edits"] != len(done)):
            checkpoint()  # cut while checking this point: the log holds its edits, the result not yet the point
        for i in range(done[-1] + 1 if done else 0, len(records)):
            rec = records[i]
            try:
                out = mend.edit(rec.edit.prompt, rec.edit.target, force=force, author=AUTHOR)
            except Rejected as e:
                refused += 1
                log.warning("guard refused edit %d: %s", i, e.detail)
                continue
            edit_ms.append(out.elapsed_ms)
            done.append(i)
            if len(done) in CURVE:
                checkpoint()
        if not points or points[-1]["edits"] != len(done):  # the end, wherever it falls
            checkpoint()
        metrics = mend.metrics()
        canary_after = greedy(mend, canaries)
    same = sum(a == b for a, b in zip(ref.canaries, canary_after))
    return {"curve": points, "refused": refused, "wall_s": time.perf_counter() - t0, "edit_ms": edit_ms,
            "done": done, "complete": True, "resumed_at": resumed_at,
            "canaries": {"prompts": len(ref.canaries), "greedy_tokens": 4, "unchanged": same,
                         "agreement": same / max(len(ref.canaries), 1)},
            "metrics": [line for line in metrics.splitlines()
                        if line.startswith(("mend_weight_drift", "mend_canary_agreement", "mend_active_edits"))]}


def unedited(p, work: Path, settings: dict):
    """A server with an empty log beside the story's: the unedited model's answers, read again."""
    shutil.rmtree(work / "base", ignore_errors=True)
    return serving(p, work / "base" / "data", work / "base.log", **settings)


def says_end(p, work: Path, settings: dict, records: list[EditRecord], done: list[int], of: int, n: int,
             samples: Path) -> dict:
    """The generation check of n of the first `of` records edited (spread over the edit order), with every edit
    of the story stored: on a server that replays the story's log, which must hold exactly `done`."""
    edited = [j for j in done if j < of]
    pick = [edited[i] for i in spread(len(edited), n)]
    t0 = time.perf_counter()
    with unedited(p, work, settings) as s, MendClient(s.url, timeout=600.0) as mend:
        refs = references(mend, [records[j] for j in pick])
    with serving(p, work / "data", work / "server.log", **settings) as s:
        if logged(s.url, records) != done:
            raise ValueError("the story's log does not hold exactly the edits its result records")
        with MendClient(s.url, timeout=600.0) as mend:
            checked = checks(mend, [records[j] for j in pick], refs)
    samples.write_text(json.dumps([{"record": j, **sample} for j, (_, sample) in zip(pick, checked)], indent=1) + "\n")
    return {"n": len(pick), "of": len(edited), "edits": len(done), **mean_metrics([row for row, _ in checked]),
            "wall_s": time.perf_counter() - t0}


def compare(points: list[dict], library: Path) -> list[dict]:
    """Per curve point and metric: the HTTP value, the library's, and the difference."""
    lib = json.loads(library.read_text())
    lib_points = {p["edits"]: p for r in lib["results"].values() for p in r["curve"]}
    rows = []
    for p in points:
        other = lib_points.get(p["edits"])
        if other:
            rows += [{"edits": p["edits"], "metric": k, "http": p[k], "library": other[k], "diff": p[k] - other[k]}
                     for k in p if k in other and k != "edits"]
    return rows


def main(data: str = typer.Option("zsre:../shared/data/zsre/dev.json", help="zsre:FILE or counterfact:FILE"),
         k: int = typer.Option(1000, "-k", help="edits in the story"),
         fill_from: Optional[str] = typer.Option(None, "--fill", help="top the story up to k from this file's "
                                                 "other subjects (e.g. zsre:../shared/data/zsre/train.json)"),
         recheck_n: Optional[int] = typer.Option(None, "--recheck", help="rescore only the first N edits at each "
                                                                        "point (default: every edit so far)"),
         library: Optional[Path] = typer.Option(None, help="`mend eval --sequential K --json` output to compare with"),
         force: bool = typer.Option(False, help="send force: true (the guard still measures and records)"),
         method: str = typer.Option("scoped", help="MEND_METHOD of the server: scoped or inplace"),
         canaries: int = typer.Option(500, help="greedy 4-token answers of this many of the service's default "
                                                "canaries (never edited, never evaluated) before and after"),
         says: int = typer.Option(20, help="the first N edits are checked by generation at every curve point"),
         end_n: Optional[int] = typer.Option(None, "--says-end", help="once the story is complete, check N of the "
                                             "rechecked edits by generation, spread over the edit order"),
         resume: bool = typer.Option(False, help="go on with the story this command left cut short (its log and "
                                                 "partial result under --out); the unedited model's answers are "
                                                 "read again from a server with an empty log"),
         smoke: bool = False, model: Optional[str] = None, editor: Optional[str] = None,
         threads: Optional[int] = None, out: Optional[Path] = None) -> None:
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    # The same records, in the same order, as `mend eval --sequential K` (one per subject).
    records = load_records(data, k, one_per_subject=True)
    if fill_from and len(records) < k:
        records = fill(records, load_records(fill_from), k)
    name = f"lifelong_{data.split(':')[0]}_{method}_{k}"
    work = p.out / "lifelong" / name  # one story's log: another story never shares or deletes it
    head = {"data": data, "fill": fill_from, "k": len(records), "method": method, "recheck": recheck_n,
            "says": says, "canary_prompts": canaries, "force": force}
    prompts = [c if isinstance(c, str) else c["prompt"] for c in json.loads(DEFAULT_CANARIES.read_text())[:canaries]]
    checked = records if recheck_n is None else records[:recheck_n]
    # MEND_MAX_NEW_TOKENS bounds a scored target too: some zsRE locality answers are 140 tokens long.
    settings = {"MEND_METHOD": method, "MEND_MAX_NEW_TOKENS": "256"}
    prior, ref = None, None
    if end_n is not None and end_n < 1:
        raise typer.BadParameter("--says-end must be >= 1")

    def end(result: dict) -> dict:
        return {**result, "says_end": says_end(p, work, settings, records, result["done"], len(checked), end_n,
                                               p.out / f"{name}_says_end_samples.json")}

    if resume:
        doc = json.loads((p.out / f"{name}.json").read_text())
        saved = doc["results"]
        differs = {key for key in head if key in saved and saved[key] != head[key]}
        if differs or (saved.get("complete") and end_n is None):
            raise typer.BadParameter(f"{p.out / name}.json is not this story cut short (differs in "
                                     f"{sorted(differs)}): nothing to resume")
        if saved.get("complete"):  # --says-end alone, on the story as it ended
            save(p, name, end(saved), doc["command"] + f" ; {command_line()}")
            return
        with unedited(p, work, settings) as s:
            ref = read_before(s.url, checked, records[:says], prompts)
    else:
        shutil.rmtree(work, ignore_errors=True)
    with serving(p, work / "data", work / "server.log", **settings) as s:
        if resume:
            done = logged(s.url, records)
            if done[:len(saved.get("done", []))] != saved.get("done", []):
                raise ValueError("the story's log does not begin with the edits its result records")
            prior = {**saved, "done": done}
            log.info("resuming after %d edits (replayed in %s s)", len(done), s.replay_seconds())
        else:
            ref = read_before(s.url, checked, records[:says], prompts)
        result = run_story(s.url, records, force, prompts, ref, s.proc.pid,
                           lambda partial: save(p, name, {**head, **partial}, command_line()), prior)
    if library:
        result["vs_library"] = compare(result["curve"], library)
    save(p, name, {**head, **result}, command_line())
    if end_n is not None:  # the story is saved whole first: a cut check is run again alone
        save(p, name, {**head, **end(result)}, command_line())


if __name__ == "__main__":
    typer.run(main)
