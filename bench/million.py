"""What selection costs as scoped edits pile up (issue 31), keys only: the codebook the server keeps, filled with
N real keys of the default model, then timed where a request pays (adding an edit, selecting for a request) and
measured where memory grows.

    python -m bench.million --points 1000,10000,100000 --threads 2
    python -m bench.million --smoke          # a tiny random model, a few thousand keys: the mechanics only

The fill is every real record first (zsRE and CounterFact, train and dev, one edit prompt per subject), then
generated questions: CounterFact's relation templates and zsRE's questions with their subject replaced by a
generated name (a first word of one real subject and a last word of another, all distinct), so selection meets
the crowding of real questions, never random vectors. Keys are computed once (SmolLM2: block 10 of 30, batches of
64) and kept under --out as safetensors chunks, so a run that stops goes on. The requests timed at each point are
the dev records' rephrases (CounterFact paraphrases, zsRE rephrases) and locality prompts, keyed as a request is.
Each edit is stored as the service stores it: its definition (key, prompts, targets, bank radius), no factors.
From 20,000 rows on the codebook selects through its key index (editor_core/scope/index.py); every request is
also selected by the exact scan, and the share of equal selections is reported beside both timings.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import random
import resource
import statistics
import time
from pathlib import Path
from typing import Optional

import torch
import typer
from safetensors.torch import load_file, save_file

from editor_core import DIGEST, LowRankDelta, ScopedMeta, load_base_model
from editor_core.data import load_records
from editor_core.scope import Scope

from .common import ROOT, command_line, make_profile, save, setup_logging

log = logging.getLogger("bench.million")
DATA = Path(os.environ.get("BENCH_DATA_DIR", ROOT.parent / "shared" / "data"))  # zsre/ and counterfact/ splits
CHUNK = 50_000  # keys per cached file


def real_records(data: Path = DATA) -> dict[str, tuple[str, str]]:
    """Subject -> (prompt, target) of every real record, one per subject, train and dev of both sets."""
    out: dict[str, tuple[str, str]] = {}
    for kind in ("zsre", "counterfact"):
        for split in ("dev", "train"):
            for r in load_records(f"{kind}:{data / kind / split}.json", None):
                out.setdefault(r.subject or r.edit.prompt, (r.edit.prompt, r.edit.target))
    return out


def real_questions(data: Path = DATA) -> list[tuple[str, str]]:
    return list(real_records(data).values())


def templates(data: Path = DATA) -> tuple[list[str], list[str], list[str], list[str]]:
    """Question templates with "{}" for the subject, their records' answers, and the words real subjects begin
    and end with."""
    forms, answers, firsts, lasts = set(), [], set(), set()
    for rec in json.loads((data / "counterfact" / "train.json").read_text()):
        rw = rec["requested_rewrite"]
        forms.add(rw["prompt"])
        answers.append(rw["target_new"]["str"])
        words = rw["subject"].split()
        if len(words) >= 2 and all(w.isalpha() for w in words):
            firsts.add(words[0])
            lasts.add(words[-1])
    for rec in json.loads((data / "zsre" / "train.json").read_text()):
        if rec["subject"] in rec["src"]:
            forms.add(rec["src"].replace(rec["subject"], "{}"))
            answers.append(rec["alt"])
    return sorted(forms), answers, sorted(firsts), sorted(lasts)


def fill(n: int, seed: int = 0, data: Path = DATA) -> list[tuple[str, str]]:
    """The first n questions of the fill: real records, then generated ones over distinct generated names."""
    real = real_records(data)
    if n <= len(real):
        return list(real.values())[:n]
    forms, answers, firsts, lasts = templates(data)
    # A generated name is nobody's: neither another generated subject nor a real one ("Ada" + "Lovelace").
    rnd, names, out = random.Random(seed), set(real), list(real.values())
    if len(firsts) * len(lasts) - len(names) < n - len(out):
        raise ValueError(f"{len(firsts)} first and {len(lasts)} last words make too few new names for {n} questions")
    while len(out) < n:
        name = f"{rnd.choice(firsts)} {rnd.choice(lasts)}"
        if name in names:
            continue
        names.add(name)
        out.append((rnd.choice(forms).format(name), rnd.choice(answers)))
    return out


def keys_of(scope: Scope, model, tok, prompts: list[str], cache: Path) -> torch.Tensor:
    """Unit keys of these prompts, computed in chunks kept under `cache` (a stopped run goes on)."""
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for c in range(0, len(prompts), CHUNK):
        chunk = prompts[c : c + CHUNK]
        # Named by its prompts: a changed fill computes its keys anew rather than reading another fill's.
        digest = hashlib.sha256("\n".join(chunk).encode()).hexdigest()[:12]
        path = cache / f"keys_{c // CHUNK:04d}_{digest}.safetensors"
        if path.exists():
            parts.append(load_file(path)["keys"])
            continue
        t0, rows = time.perf_counter(), []
        # Batched by length: padding is most of a batch's work otherwise (12 ms a prompt against 7.5 at 1 thread).
        order = sorted(range(len(chunk)), key=lambda i: len(chunk[i]))
        for i in range(0, len(order), 64):
            rows.append(scope.prompt_keys(model, tok, [chunk[j] for j in order[i : i + 64]]))
            scope._memo.clear()  # the fill is keyed once: the memo would only hold it
        keys = torch.empty(len(chunk), scope.center.numel())
        keys[torch.tensor(order)] = torch.cat(rows)
        save_file({"keys": keys.contiguous()}, path)
        log.info("keys %d-%d in %.0f s", c, c + len(chunk), time.perf_counter() - t0)
        parts.append(keys)
    return torch.cat(parts) if parts else torch.zeros(0, scope.center.numel())


def definition(key: torch.Tensor, prompt: str, target: str, radius: float | None) -> LowRankDelta:
    meta = ScopedMeta(prompts=(prompt,), targets=(target,), radii=None if radius is None else (radius,)).written()
    return LowRankDelta({}, {**meta, DIGEST: "-"}, key[None])


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def requests(n: int, data: Path = DATA) -> list[str]:
    """What is timed at each point: dev edit prompts, rephrases and locality prompts, as users would send them."""
    out = []
    for kind in ("zsre", "counterfact"):
        for r in load_records(f"{kind}:{data / kind / 'dev'}.json", n, one_per_subject=True):
            out += [r.edit.prompt] + r.rephrases[:2] + [q.prompt for q in r.loc[:1]]
    return out


def main(points: str = typer.Option("1000,10000,100000", help="edits stored at each measuring point"),
         n_requests: int = typer.Option(100, help="dev records per set whose prompts are timed"),
         data: Path = typer.Option(DATA, help="folder with zsre/ and counterfact/ train.json and dev.json"),
         smoke: bool = False, threads: Optional[int] = None, out: Optional[Path] = None) -> None:
    setup_logging()
    p = make_profile(smoke, threads=threads, out=out)
    torch.set_num_threads(p.threads)
    sizes = sorted(int(x) for x in points.split(","))
    model, tok = load_base_model(p.model)
    scope = Scope.load(p.editor, [])
    asked = requests(n_requests, data)
    questions = fill(sizes[-1], data=data)
    keys = keys_of(scope, model, tok, [q for q, _ in questions], p.out / "million" / f"keys_{Path(p.editor).name}")
    radii = scope.radii(keys) or [None] * len(keys)
    request_keys = [scope.request_keys(model, tok, [a])[0] for a in asked]  # keyed alone, as requests are
    book, rows, done, t_add = scope.empty(), [], 0, 0.0
    base_rss = rss_mib()
    for size in sizes:
        t0 = time.perf_counter()
        for i in range(done, size):
            book = book.added(f"e{i}", definition(keys[i], *questions[i], radii[i]))
        t_add, added = time.perf_counter() - t0, size - done
        done = size
        select_ms, exact_ms, same = [], [], 0
        for key, text in zip(request_keys, asked):
            t0 = time.perf_counter()
            got = book.nearest(key[None], scope.cfg.radius, [text])
            select_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            want = book.nearest(key[None], scope.cfg.radius, [text], exact=True)
            exact_ms.append((time.perf_counter() - t0) * 1000)
            same += got == want
        gc.collect()
        t0 = time.perf_counter()
        gc.collect()
        gc_ms = (time.perf_counter() - t0) * 1000
        gc.freeze()
        t0 = time.perf_counter()
        gc.collect()
        gc_frozen_ms = (time.perf_counter() - t0) * 1000
        gc.unfreeze()
        selected = sum(r is not None for r in book.nearest(torch.stack(request_keys), scope.cfg.radius, asked))
        row = {"edits": size, "add_us_per_edit": t_add / max(added, 1) * 1e6,
               "select_ms_p50": statistics.median(select_ms),
               "select_ms_p95": sorted(select_ms)[int(0.95 * len(select_ms))],
               "exact_scan_ms_p50": statistics.median(exact_ms), "same_as_exact": same / len(asked),
               "indexed": book.rows.index is not None,
               "requests_selecting": selected / len(asked), "rss_mib": rss_mib(),
               "rss_mib_over_start": rss_mib() - base_rss,
               "codebook_key_mib": book.rows.keys.numel() * 4 / 2**20, "gc_full_ms": gc_ms,
               "gc_full_ms_frozen": gc_frozen_ms, "gc_tracked": len(gc.get_objects())}
        rows.append(row)
        log.info("%s", {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    first = rows[0]
    result = {"points": rows, "requests": len(asked), "real_records": len(real_questions(data)),
              "select_p50_ratio": rows[-1]["select_ms_p50"] / first["select_ms_p50"],
              "add_ratio": rows[-1]["add_us_per_edit"] / first["add_us_per_edit"],
              "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    save(p, "million_keys", result, command_line())


if __name__ == "__main__":
    typer.run(main)
