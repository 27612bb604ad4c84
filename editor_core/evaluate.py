"""Evaluation on the same records for every method: single, batched, and sequential edits.

Scores (teacher-forced, whole answer, as in the MEND paper): `edit` on x_e, `rephrase` on x'_e, `loc` = share
of locality prompts whose every answer token keeps its pre-edit argmax (strict), `loc_token` the token-level
share, `loc_kl` the mean KL(pre ‖ post) on those answer tokens. CounterFact adds Meng et al.'s efficacy,
paraphrase and neighborhood (mean per-token NLL of the new vs the true target).
"""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .baselines import finetune_delta
from .batching import Batch, Row
from .data import EditRecord, EditRequest, target_nll, tokenize_edits
from .delta import LowRankDelta, restore, snapshot
from .fluency import Generate, Query, long_metrics, long_reference, reply_metrics, reply_reference
from .generation import prompt_ids
from .layers import EditedLayer
from .scope import CHAT, PLAIN, Ask, Scope, Worded
from .scoring import TargetScore, answer_logits, score_targets

# Scoring is not bound by the editor's 64-token window: a long locality answer is scored after its whole prompt
# (as POST /score does), not after a prompt cut to make room for it.
SCORE_MAX_LENGTH = 1024
FLOOR_SAMPLES = 20  # batches whose plain forward+backward is timed for the latency ratio
Method = Callable[[list[EditRecord]], LowRankDelta]  # computes a delta on the current model, leaves it unchanged
Reword = Callable[[str, str], Worded | None]  # (text, form) -> the piece made for that wording (`Scope.worded`)


@torch.no_grad()
def score(model: PreTrainedModel, tok: PreTrainedTokenizerBase, reqs: list[EditRequest], keep_logp: bool = False,
          chunk: int = 32, scope: Scope | None = None, reword: Reword | None = None) -> list[TargetScore]:
    """`score_targets` in chunks, scoped edits selected by each prompt when a scope is given (with `reword`, the
    piece made for the prompt's wording, as POST /score applies it)."""
    out = []
    for i in range(0, len(reqs), chunk):
        part = reqs[i : i + chunk]
        prompts = [r.prompt for r in part]
        worded = [reword(p, PLAIN) for p in prompts] if scope and reword else None
        with scope.applying_to(model, tok, prompts, worded=worded) if scope else nullcontext():
            out += score_targets(model, tok, part, SCORE_MAX_LENGTH, keep_logp)
    return out


def forward_backward_ms(model: PreTrainedModel, tok, reqs: list[EditRequest], max_length: int = 64) -> float:
    """One plain forward + backward of the same prompts with every weight's gradient: the floor for MEND.
    It projects the answer positions alone, as MEND's own gradient does, so the ratio compares like with like."""
    b = {k: v.to(model.device) for k, v in tokenize_edits(tok, reqs, max_length).items()}
    params = [p for p in model.parameters()]
    t0 = time.perf_counter()
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        try:
            torch.autograd.grad(target_nll(answer_logits(model, b), b["labels"]).sum(), params, allow_unused=True)
        finally:
            for p in params:
                p.requires_grad_(False)
    return (time.perf_counter() - t0) * 1000


Scorer = Callable[..., list[TargetScore]]  # (requests, keep_logp=False) -> one score per request


def scorer(model: PreTrainedModel, tok: PreTrainedTokenizerBase, scope: Scope | None = None,
           reword: Reword | None = None) -> Scorer:
    """`score` on this model (and scope); POST /score answers the same questions over HTTP (bench.lifelong_story)."""
    return lambda reqs, keep_logp=False: score(model, tok, reqs, keep_logp, scope=scope, reword=reword)


def _score_loc(score_fn: Scorer, loc: list[EditRequest]) -> list[TargetScore]:
    """Answers on locality prompts; log-probs (a vocabulary row per token) only for the first, which the KL uses."""
    return score_fn(loc[:1], keep_logp=True) + score_fn(loc[1:]) if loc else []


def loc_reference(score_fn: Scorer, records: list[EditRecord]) -> list[list[TargetScore]]:
    """Pre-edit answers on every record's locality prompts."""
    return [_score_loc(score_fn, r.loc) for r in records]


def record_metrics(score_fn: Scorer, rec: EditRecord, ref: list[TargetScore]) -> dict[str, float]:
    new = [rec.edit] + [EditRequest(p, rec.edit.target) for p in rec.rephrases]
    scored = score_fn(new)
    loc = _score_loc(score_fn, rec.loc)
    m = {"edit": float(scored[0].exact)}
    if rec.rephrases:
        m["rephrase"] = statistics.mean(float(s.exact) for s in scored[1:])
    if loc:
        m["loc"] = statistics.mean(float(a.argmax == b.argmax) for a, b in zip(loc, ref))
        same = [x == y for a, b in zip(loc, ref) for x, y in zip(a.argmax, b.argmax)]
        m["loc_token"] = sum(same) / max(len(same), 1)
        if ref[0].logp is not None and loc[0].logp is not None:  # not served over HTTP
            p, q = ref[0].logp.float(), loc[0].logp.float()
            m["loc_kl"] = float((p.exp() * (p - q)).sum(-1).mean())
    if rec.true_target is not None:
        true = score_fn([EditRequest(x.prompt, rec.true_target) for x in new])
        m["efficacy"] = float(scored[0].mean_nll < true[0].mean_nll)
        if rec.rephrases:
            m["paraphrase"] = statistics.mean(float(a.mean_nll < b.mean_nll) for a, b in zip(scored[1:], true[1:]))
        nb_new = score_fn([EditRequest(x.prompt, rec.edit.target) for x in rec.loc])
        if loc:
            m["neighborhood"] = statistics.mean(float(t.mean_nll < n.mean_nll) for t, n in zip(loc, nb_new))
    return m


def mean_metrics(rows: list[dict]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k: statistics.mean(r[k] for r in rows if k in r) for k in keys}


def local_generate(model: PreTrainedModel, tok: PreTrainedTokenizerBase, scope: Scope | None = None,
                   max_rows: int = 16, reword: Reword | None = None) -> Generate:
    """`fluency.Generate` in this process, as the service generates: greedy, a chat question in the chat template,
    the scoped edit each question selects acting on its own row until its answer is said; the queries are decoded
    together, as concurrent requests are (`batching.Batch`). With `reword`, a question selecting an edit in other
    words gets the piece made for its wording, as the service does by default (MEND_REWORD); without, the edit
    prompt's piece, as MEND_REWORD=false."""
    def gen(queries: list[Query]) -> list[str]:
        rows = []
        for prompt, question, tokens in queries:
            messages = None if question is None else [{"role": "user", "content": question}]
            text, form = (prompt, PLAIN) if question is None else (question, CHAT)
            ask = Ask(text, form, scope.codebook, reword(text, form) if reword else None) if scope else None
            rows.append(Row(prompt_ids(tok, prompt, messages), tokens, ask=ask))
        batch, waiting = Batch(model, tok, scope), list(rows)
        while waiting or batch.rows:
            if room := batch.room(max_rows):
                batch.join(waiting[:room])
                waiting = waiting[room:]
            batch.step()
        return [r.done.text for r in rows]

    return gen


def evaluate(model: PreTrainedModel, tok, records: list[EditRecord], method: Method, names: list[str],
             batch_size: int = 1, sequential: int | None = None, curve: tuple[int, ...] = (),
             scope: Scope | None = None, generate: int = 0, reword: Reword | None = None) -> dict:
    """Single/batched: each batch's delta is applied, scored, and the base restored exactly.
    Sequential: deltas accumulate without reverting; every edit so far is re-checked at each curve point.
    With a scope, the method's deltas are scoped edits (`scoped_mend_method`), stored in it instead of added to
    the weights. With `generate`, the first `generate` records are also checked by what the model says
    (`fluency.reply_metrics`, keys prefixed `says_`): right after their edit, or after the last edit when
    sequential. `reword` (with a scope): a prompt in other words than its edit's gets the piece made for them
    (`Scope.worded`), in scores and replies alike, as the service serves by default."""
    refs = loc_reference(scorer(model, tok), records)
    score_fn = scorer(model, tok, scope, reword)
    gen_refs = [_reference(local_generate(model, tok), r) for r in records[:generate]]  # the unedited model
    gen_fn = local_generate(model, tok, scope, reword=reword)
    base = snapshot(model, names)
    rows, latencies, floors, points = [], [], [], []
    recs = records[: sequential] if sequential else records
    if scope:
        scope.clear()
        scope.attach(model)
    try:
        for i in range(0, len(recs), batch_size):
            chunk = recs[i : i + batch_size]
            t0 = time.perf_counter()
            delta = method(chunk)
            latencies.append((time.perf_counter() - t0) * 1000)
            if len(floors) < FLOOR_SAMPLES:  # a full backward per record would double the evaluation's cost
                floors.append(forward_backward_ms(model, tok, [r.edit for r in chunk]))
            scope.add(str(i), delta) if scope else delta.apply(model)
            done = i + len(chunk)
            if not sequential:
                rows += [record_metrics(score_fn, r, ref) for r, ref in zip(chunk, refs[i:done])]
                for j in range(i, min(done, generate)):
                    rows[j].update(_says(gen_fn, recs[j], gen_refs[j]))
                scope.clear() if scope else restore(model, base)
            elif done in curve or done == len(recs):
                so_far = mean_metrics([record_metrics(score_fn, r, ref) for r, ref in zip(recs[:done], refs[:done])])
                if done == len(recs) and generate:
                    so_far.update(mean_metrics([_says(gen_fn, r, ref) for r, ref in zip(recs, gen_refs)]))
                points.append({"edits": done, **so_far})
    finally:
        restore(model, base)
        if scope:
            scope.clear()
            scope.detach()
    summary = points[-1].copy() if sequential else mean_metrics(rows)
    summary.pop("edits", None)
    summary["latency_ms_p50"] = statistics.median(latencies)
    summary["latency_ms_p95"] = sorted(latencies)[int(0.95 * (len(latencies) - 1))]
    summary["fwd_bwd_ms_p50"] = statistics.median(floors)
    summary["latency_ratio"] = summary["latency_ms_p50"] / summary["fwd_bwd_ms_p50"]
    if sequential:  # does editing get slower as edits pile up? (the first vs the last 50 edits)
        summary["latency_ms_p50_first50"] = statistics.median(latencies[:50])
        summary["latency_ms_p50_last50"] = statistics.median(latencies[-50:])
    summary["selection"] = statistics.mean(summary.get(k, 0.0) for k in ("edit", "rephrase", "loc"))
    summary["n"] = len(recs)
    return {"summary": summary, "curve": points}


def _reference(gen: Generate, rec: EditRecord) -> dict:
    return (long_reference if rec.kind == "longform" else reply_reference)(gen, rec)


def _says(gen: Generate, rec: EditRecord, ref: dict) -> dict[str, float]:
    """What the model says after the edit: a long-form correction (`longform:`) by `long_metrics`."""
    metrics = long_metrics if rec.kind == "longform" else reply_metrics
    return {f"says_{k}": v for k, v in metrics(gen, rec, ref)[0].items()}


def mend_method(model, tok, editor, rel_tol: float = 0.0, dtype: torch.dtype | None = None) -> Method:
    """MEND's delta; with rel_tol/dtype, compressed exactly as the service logs and applies it."""
    def run(recs: list[EditRecord]) -> LowRankDelta:
        delta = editor.compute_delta(model, tok, [r.edit for r in recs])
        return delta.compressed(rel_tol, dtype) if rel_tol or dtype else delta

    return run


def scoped_mend_method(model, tok, editor, scope: Scope, rel_tol: float = 0.0,
                       dtype: torch.dtype | None = None) -> Method:
    """Each edit's scoped delta (compressed like mend_method's), as the service computes it (`Scope.compute`)."""
    def run(recs: list[EditRecord]) -> LowRankDelta:
        return scope.compute(model, tok, editor, [r.edit for r in recs], rel_tol, dtype)

    return run


def ft_method(model, tok, layers: list[EditedLayer], loc_pool: list[EditRequest] | None = None,
              seed: int = 0, **kw) -> Method:
    """FT, or FT+KL when a pool of locality prompts is given (disjoint from the evaluated records' own)."""
    rng = random.Random(seed)

    def run(recs: list[EditRecord]) -> LowRankDelta:
        loc = rng.sample(loc_pool, len(recs)) if loc_pool else None
        return finetune_delta(model, tok, layers, [r.edit for r in recs], loc=loc, **kw)

    return run


def evaluate_mend(model, tok, editor, records: list[EditRecord]) -> dict[str, float]:
    return evaluate(model, tok, records, mend_method(model, tok, editor), [l.name for l in editor.layers])["summary"]
