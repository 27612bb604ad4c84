"""What the service says after edits, judged on greedy /generate replies only (issue 12), through HTTP at the
service's default settings.

    python -m bench.says --data zsre:../shared/data/zsre/dev.json -n 100
    python -m bench.says --data counterfact:../shared/data/counterfact/dev.json -n 60 --sequential
    python -m bench.says --smoke       # a tiny random model: the mechanics only

Per record: the reply to the edit prompt starts with the new answer (`prompt`), to each rephrase/paraphrase
(`rephrase`); the chat-templated form of both mentions it (`chat`, `chat_rephrase`); every unrelated prompt's
whole 32-token reply is unchanged (`unchanged`; zsRE's NQ question, CounterFact's neighbours); the 64-token reply
to the edit prompt repeats itself (`repeat`: the target or any 4-gram 3+ times) and its n-gram entropy
(`entropy`). Fluency has two references: the unedited model's reply to the prompt (`*_unedited`), and the
unedited model continuing the prompt with the new answer written in (`*_answer_in`), which is what the text after
the answer should read like. Single edits are rolled back after their check; `--sequential` keeps every edit and
checks them all at the end; `--batch B` sends B edits in one /edit.
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Optional

import httpx
import typer

from editor_core.data import EditRecord, join, load_records
from editor_core.evaluate import mean_metrics
from editor_core.fluency import mentions, ngram_entropy, repeats, says

from .common import command_line, make_profile, save, serving, setup_logging

log = logging.getLogger("bench.says")
SHORT, LONG = 32, 64  # tokens of a checked reply, and of a fluency continuation


def generate(http: httpx.Client, prompt: str | None = None, question: str | None = None, tokens: int = SHORT) -> str:
    body = {"prompt": prompt} if question is None else {"messages": [{"role": "user", "content": question}]}
    r = http.post("/generate", json={**body, "max_new_tokens": tokens})
    r.raise_for_status()
    return r.json()["text"]


def unrelated(rec: EditRecord, k: int = 2) -> list[str]:
    return [q.prompt for q in rec.loc[:k]]


def before(http: httpx.Client, rec: EditRecord) -> dict:
    """What the unedited model says: the references of locality and fluency."""
    target = rec.edit.target
    answer_in = join(rec.edit.prompt, target)[1]
    return {"unrelated": [generate(http, p) for p in unrelated(rec)],
            "long": generate(http, rec.edit.prompt, tokens=LONG),
            # minus the answer's own tokens, roughly, so both texts are about LONG tokens long
            "answer_in": answer_in + generate(http, "".join(join(rec.edit.prompt, target)),
                                              tokens=max(LONG - len(target.split()) * 2, 8))}


def check(http: httpx.Client, rec: EditRecord, ref: dict, samples: list[dict] | None = None) -> dict:
    target, reph = rec.edit.target, rec.rephrases[:2]
    long = generate(http, rec.edit.prompt, tokens=LONG)
    row = {"prompt": float(says(long, target)),
           "chat": float(mentions(generate(http, question=rec.edit.prompt), target)),
           "repeat": float(repeats(long, target)), "entropy": ngram_entropy(long),
           "repeat_unedited": float(repeats(ref["long"], target)), "entropy_unedited": ngram_entropy(ref["long"]),
           "repeat_answer_in": float(repeats(ref["answer_in"], target)),
           "entropy_answer_in": ngram_entropy(ref["answer_in"])}
    if ref["unrelated"]:
        row["unchanged"] = statistics.mean(generate(http, p) == b for p, b in zip(unrelated(rec), ref["unrelated"]))
    if reph:
        row["rephrase"] = statistics.mean(says(generate(http, p), target) for p in reph)
        row["chat_rephrase"] = statistics.mean(mentions(generate(http, question=p), target) for p in reph)
    if samples is not None:  # what the averages hide: the replies themselves
        samples.append({"edit_prompt": rec.edit.prompt, "target": target, "reply": long, "unedited": ref["long"],
                        "answer_in": ref["answer_in"], **row})
    return row


def edit(http: httpx.Client, recs: list[EditRecord]) -> tuple[str, float]:
    items = [{"prompt": r.edit.prompt, "target": r.edit.target} for r in recs]
    body = items[0] if len(items) == 1 else {"edits": items}
    r = http.post("/edit", json={**body, "force": True, "author": "bench.says"})
    r.raise_for_status()
    return r.json()["edit_id"], r.json()["elapsed_ms"]


def run(url: str, records: list[EditRecord], sequential: bool, batch: int,
        samples: list[dict] | None = None) -> dict:
    rows, edit_ms = [], []
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600.0) as http:
        refs = [before(http, r) for r in records]  # all before the first edit: sequential runs need them so
        groups = [list(range(i, min(i + batch, len(records)))) for i in range(0, len(records), batch)]
        for n, group in enumerate(groups, 1):
            eid, ms = edit(http, [records[i] for i in group])
            edit_ms.append(ms)
            if not sequential:
                rows += [check(http, records[i], refs[i], samples) for i in group]
                http.post("/rollback", json={"edit_id": eid}).raise_for_status()
            if n % 10 == 0:
                log.info("%d/%d edits", n * batch, len(records))
        if sequential:
            rows = [check(http, rec, ref, samples) for rec, ref in zip(records, refs)]
    return {"n": len(rows), **mean_metrics(rows), "edit_ms_p50": statistics.median(edit_ms),
            "wall_s": time.perf_counter() - t0}


def main(data: str = typer.Option("zsre:../shared/data/zsre/dev.json", help="zsre:FILE or counterfact:FILE"),
         n: int = typer.Option(100, "-n", help="records (one per subject, in file order)"),
         sequential: bool = typer.Option(False, help="keep every edit; check all of them after the last"),
         batch: int = typer.Option(1, help="edits sent together in one /edit"),
         method: str = typer.Option("scoped", help="MEND_METHOD of the server (the default is scoped)"),
         smoke: bool = False, model: Optional[str] = None, editor: Optional[str] = None,
         threads: Optional[int] = None, out: Optional[Path] = None,
         samples: Optional[Path] = typer.Option(None, help="also write each record's replies and scores here (JSON)")) -> None:
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    records = load_records(data, n, one_per_subject=True)
    kind = data.split(":")[0]
    mode = f"seq{n}" if sequential else (f"batch{batch}" if batch > 1 else "single")
    work = p.out / "says" / f"{kind}-{method}-{mode}"
    shutil.rmtree(work, ignore_errors=True)
    with serving(p, work / "data", work / "server.log", MEND_METHOD=method, MEND_MAX_NEW_TOKENS="256") as s:
        rows: list[dict] | None = [] if samples else None
        result = run(s.url, records, sequential, batch, rows)
    if samples:
        samples.write_text(json.dumps(rows, indent=1) + "\n")
    log.info("%s", {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})
    save(p, f"says_{kind}_{method}_{mode}", {"data": data, "method": method, "mode": mode, **result}, command_line())


if __name__ == "__main__":
    typer.run(main)
