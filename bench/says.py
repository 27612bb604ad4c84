"""What the service says after edits, judged on greedy /generate replies only (issue 12), through HTTP at the
service's default settings.

    python -m bench.says --data zsre:../shared/data/zsre/dev.json -n 100
    python -m bench.says --data counterfact:../shared/data/counterfact/dev.json -n 60 --sequential
    python -m bench.says --data longform:../shared/data/counterfact/dev.json -n 200   # sentence answers
    python -m bench.says --smoke       # a tiny random model: the mechanics only

Per record: the reply to the edit prompt starts with the new answer (`prompt`), to each rephrase/paraphrase
(`rephrase`); the chat-templated form of both mentions it (`chat`, `chat_rephrase`); every unrelated prompt's
whole 32-token reply is unchanged (`unchanged`; zsRE's NQ question, CounterFact's neighbours), and so is each
reply to two questions about the edited subject asking another relation (`same_subject`, CounterFact only:
`data._other_questions`); the 64-token reply
to the edit prompt repeats itself (`repeat`: the target or any 4-gram 3+ times) and its n-gram entropy
(`entropy`). Fluency has two references: the unedited model's reply to the prompt (`*_unedited`), and the
unedited model continuing the prompt with the new answer written in (`*_answer_in`), which is what the text after
the answer should read like. Single edits are rolled back after their check; `--sequential` keeps every edit and
checks them all at the end (or `--check N` of them, spread evenly over the edit order, when checking all would
not fit in the time); `--batch B` sends B edits in one /edit.

`longform:FILE` (a CounterFact file's records as questions answered by a whole sentence, editor_core/longform.py)
is judged by `fluency.long_metrics` instead: the reply contains the whole sentence (`whole`, `chat_whole`), states
the new object (`object`, `chat_object`, `rephrase_object`), is free of junk (stray symbols, a doubled word, the
sentence cut off), and what follows the sentence does not repeat (`repeat`, `entropy`).
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import typer

from editor_core.data import EditRecord, load_records
from editor_core.evaluate import mean_metrics
from editor_core.fluency import Generate, Query, long_metrics, long_reference, reply_metrics, reply_reference
from service.client import MendClient

from .common import command_line, make_profile, save, serving, setup_logging

log = logging.getLogger("bench.says")


REPLIES: dict[str, str] = {}  # every query's reply, with --replies: what a refactor must leave byte-identical


def http_generate(mend: MendClient) -> Generate:
    """A check's replies as concurrent requests: the server decodes them together (continuous batching)."""
    def one(query: Query) -> str:
        prompt, question, tokens = query
        if question is None:
            text = mend.generate(prompt, max_new_tokens=tokens).text
        else:
            text = mend.generate(messages=[{"role": "user", "content": question}], max_new_tokens=tokens).text
        REPLIES[json.dumps(query)] = text
        return text

    def gen(queries: list[Query]) -> list[str]:
        with ThreadPoolExecutor(len(queries)) as pool:
            return list(pool.map(one, queries))

    return gen


def before(mend: MendClient, rec: EditRecord) -> dict:
    reference = long_reference if rec.kind == "longform" else reply_reference
    return reference(http_generate(mend), rec)


def check(mend: MendClient, rec: EditRecord, ref: dict) -> tuple[dict, dict]:
    """The record's scores, and its sample: what the averages hide, the replies themselves."""
    if rec.kind == "longform":
        row, long = long_metrics(http_generate(mend), rec, ref)
        return row, {"edit_prompt": rec.edit.prompt, "target": rec.edit.target, "reply": long, **row}
    row, long = reply_metrics(http_generate(mend), rec, ref)
    return row, {"edit_prompt": rec.edit.prompt, "target": rec.edit.target, "reply": long,
                 "unedited": ref["long"], "answer_in": ref["answer_in"], **row}


def references(mend: MendClient, recs: list[EditRecord]) -> list[dict]:
    """`before` of each record, 4 records at once (the server batches their replies)."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda r: before(mend, r), recs))


def checks(mend: MendClient, recs: list[EditRecord], refs: list[dict]) -> list[tuple[dict, dict]]:
    """`check` of each record against its reference, 4 records at once, in record order."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda rr: check(mend, *rr), zip(recs, refs)))


def edit(mend: MendClient, recs: list[EditRecord]) -> tuple[str, float]:
    items = [{"prompt": r.edit.prompt, "target": r.edit.target} for r in recs]
    out = (mend.edit(**items[0], force=True, author="bench.says") if len(items) == 1
           else mend.edit_batch(items, force=True, author="bench.says"))
    return out.edit_id, out.elapsed_ms


def spread(n: int, k: int) -> list[int]:
    """k of range(n) spread evenly, the first and the last included: early edits have the most edits after them."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def run(url: str, records: list[EditRecord], sequential: bool, batch: int, samples: Path | None = None,
        to_check: Optional[list[int]] = None) -> dict:
    """The run's mean scores; each record's sample (`check`) goes to `samples` every 10 edits and at the end.
    `to_check`: the records checked after a sequential run (all by default); only they need a reference."""
    checked, edit_ms = [], []
    to_check = list(range(len(records))) if to_check is None else to_check

    def write_samples() -> None:
        if samples is not None:
            samples.write_text(json.dumps([sample for _, sample in checked], indent=1) + "\n")

    t0 = time.perf_counter()
    with MendClient(url, timeout=600.0) as mend:
        # all before the first edit (sequential runs need them so)
        refs = dict(zip(to_check, references(mend, [records[i] for i in to_check])))
        groups = [list(range(i, min(i + batch, len(records)))) for i in range(0, len(records), batch)]
        for n, group in enumerate(groups, 1):
            eid, ms = edit(mend, [records[i] for i in group])
            edit_ms.append(ms)
            if not sequential:
                for i in group:
                    checked.append(check(mend, records[i], refs[i]))
                    checked[-1][1]["edit_ms"] = ms  # of the /edit that made it (a batch's, for --batch)
                mend.rollback(eid)
            if n % 10 == 0:
                log.info("%d/%d edits", n * batch, len(records))
                write_samples()  # a long run that is stopped keeps what it checked
        if sequential:
            checked = checks(mend, [records[i] for i in to_check], [refs[i] for i in to_check])
            for i, (_, sample) in zip(to_check, checked):
                sample["edit_ms"] = edit_ms[i // batch]
    write_samples()
    rows = [row for row, _ in checked]
    trend = {}
    if sequential:  # does an edit get slower as the edits stored pile up? (the first vs the last 100 /edit calls)
        trend = {"edit_ms_p50_first100": statistics.median(edit_ms[:100]),
                 "edit_ms_p50_last100": statistics.median(edit_ms[-100:])}
    return {"n": len(rows), "edits": len(records), **mean_metrics(rows), "edit_ms_p50": statistics.median(edit_ms),
            **trend, "wall_s": time.perf_counter() - t0}


def main(data: str = typer.Option("zsre:../shared/data/zsre/dev.json", help="zsre:FILE or counterfact:FILE"),
         n: int = typer.Option(100, "-n", help="records (one per subject, in file order)"),
         skip: int = typer.Option(0, help="leave out the first SKIP of them (to extend a run: its --samples merge)"),
         sequential: bool = typer.Option(False, help="keep every edit; check all of them after the last"),
         batch: int = typer.Option(1, help="edits sent together in one /edit"),
         check_n: Optional[int] = typer.Option(None, "--check", help="with --sequential: check only N records, spread "
                                                                     "evenly over the edit order"),
         method: str = typer.Option("scoped", help="MEND_METHOD of the server (the default is scoped)"),
         setting: list[str] = typer.Option([], help="MEND_NAME=VALUE for the server, repeatable (e.g. "
                                                    "MEND_PIECE_CACHE_MB=1: every kept edit recomputed when selected)"),
         smoke: bool = False, model: Optional[str] = None, editor: Optional[str] = None,
         threads: Optional[int] = None, out: Optional[Path] = None,
         base: Optional[Path] = typer.Option(None, help="a server data folder whose edit log the run starts from "
                                                        "(copied; e.g. bench.bulk_import's): the checked edits are "
                                                        "made among that many kept ones"),
         samples: Optional[Path] = typer.Option(None, help="also write each record's replies and scores here (JSON)"),
         replies: Optional[Path] = typer.Option(None, help="also write every query's greedy reply here "
                                                           "(JSON, sorted): diff two runs to show a refactor "
                                                           "changed no reply")) -> None:
    if not 0 <= skip < n:
        raise typer.BadParameter(f"--skip must be in [0, n), got {skip}")
    if check_n is not None and (not sequential or check_n < 1):
        raise typer.BadParameter("--check needs --sequential and N >= 1")
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    records = load_records(data, n, one_per_subject=True)[skip:]
    kind = data.split(":")[0]
    if sequential:
        mode = f"seq{n}" + (f"_check{check_n}" if check_n else "")
    else:
        mode = f"batch{batch}" if batch > 1 else "single"
    work = p.out / "says" / f"{kind}-{method}-{mode}" if base is None else \
        p.out / "says" / f"{kind}-{method}-{mode}-on-{base.name}"
    shutil.rmtree(work, ignore_errors=True)
    if base is not None:  # the log and its snapshot; a running server's socket and pid stay behind
        shutil.copytree(base, work / "data", ignore=shutil.ignore_patterns("redis.pid", "redis.sock"))
    extra = dict(s.split("=", 1) for s in setting)
    if any(not k.startswith("MEND_") for k in extra):
        raise typer.BadParameter("--setting takes MEND_NAME=VALUE")
    with serving(p, work / "data", work / "server.log", MEND_METHOD=method, MEND_MAX_NEW_TOKENS="256", **extra) as s:
        result = run(s.url, records, sequential, batch, samples,
                     None if check_n is None else spread(len(records), check_n))
    if replies is not None:
        replies.write_text(json.dumps(dict(sorted(REPLIES.items())), indent=0) + "\n")
    log.info("%s", {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})
    name = f"says_{kind}_{method}_{mode}" + ("" if base is None else f"_on_{base.name}")
    save(p, name, {"data": data, "method": method, "mode": mode, "skip": skip, "base": str(base), **result},
         command_line())


if __name__ == "__main__":
    typer.run(main)
