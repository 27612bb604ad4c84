"""Edit requests, the zsRE (MEND) and CounterFact (ROME) file formats, and tokenization with target-only labels."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    target: str


@dataclass
class EditRecord:
    """One edit with what scores it: rephrases share the edit's target; loc pairs must keep the model's answer."""

    edit: EditRequest
    rephrases: list[str]
    loc: list[EditRequest]
    subject: str = ""
    true_target: str | None = None  # CounterFact's target_true: efficacy compares P(new) with P(true)
    kind: str = "zsre"
    extra: dict = field(default_factory=dict)


def join(prompt: str, target: str) -> tuple[str, str]:
    """A space goes between prompt and target unless one side already has whitespace at the seam."""
    if prompt and target and not prompt[-1].isspace() and not target[0].isspace():
        target = " " + target
    return prompt, target


def _zsre(rec: dict) -> EditRecord:
    loc = [EditRequest(rec["loc"], rec["loc_ans"])] if rec.get("loc") and str(rec.get("loc_ans", "")).strip() else []
    rephrases = [rec["rephrase"]] if isinstance(rec.get("rephrase"), str) else list(rec.get("rephrase") or [])
    answers = rec.get("answers") or [rec.get("pred")]
    return EditRecord(EditRequest(rec["src"], rec["alt"]), rephrases, loc, rec.get("subject", ""),
                      true_target=None, kind="zsre", extra={"answer": answers[0]} if answers[0] else {})


def _counterfact(rec: dict) -> EditRecord:
    rw = rec["requested_rewrite"]
    new, true = " " + rw["target_new"]["str"], " " + rw["target_true"]["str"]
    loc = [EditRequest(p, true) for p in rec.get("neighborhood_prompts", [])]
    return EditRecord(EditRequest(rw["prompt"].format(rw["subject"]), new), list(rec.get("paraphrase_prompts", [])),
                      loc, rw["subject"], true_target=true, kind="counterfact",
                      extra={"case_id": rec.get("case_id"), "relation_id": rw.get("relation_id")})


def _other_questions(raw: list[dict], records: list[EditRecord], k: int = 2) -> None:
    """CounterFact: give each record `extra["other_questions"]`, k prompts asking its subject other relations (one
    template of each of k other relations of the file, filled with the subject, picked by the record's case id).
    Neighbours ask other subjects the same relation; these ask the same subject something else, which an edit of
    the subject must leave alone too."""
    templates: dict[str, list[str]] = {}
    for rec in raw:
        rw = rec["requested_rewrite"]
        if rw.get("relation_id") and rw["prompt"] not in templates.setdefault(rw["relation_id"], []):
            templates[rw["relation_id"]].append(rw["prompt"])
    for r in records:
        others = sorted(rel for rel in templates if rel != r.extra.get("relation_id"))
        rng = random.Random(r.extra.get("case_id"))
        r.extra["other_questions"] = [rng.choice(templates[rel]).format(r.subject)
                                      for rel in rng.sample(others, min(k, len(others)))]


def _zsre_other_questions(raw: list[dict], records: list[EditRecord], k: int = 2) -> None:
    """zsRE: give each record `extra["other_questions"]`, up to k of the file's other questions about its subject
    whose answer differs from its own (few: the first 1,000 records of the dev split have 3, of train 4)."""
    by_subject: dict[str, list[tuple[str, str]]] = {}
    for rec in raw:
        answers = rec.get("answers") or [rec.get("pred")]
        by_subject.setdefault(rec.get("subject", ""), []).append((rec["src"], answers[0]))
    for r in records:
        seen, others = {r.edit.prompt, *r.rephrases}, []
        for q, a in by_subject.get(r.subject, []) if r.subject else []:
            if a != r.extra.get("answer") and q not in seen:
                seen.add(q)
                others.append(q)
        r.extra["other_questions"] = others[:k]


def load_records(spec: str, n: int | None = None, one_per_subject: bool = False) -> list[EditRecord]:
    """Read `zsre:FILE`, `counterfact:FILE`, `longform:FILE` (a CounterFact file's records as questions answered by
    a sentence: editor_core/longform.py), or a bare FILE whose format is detected from its keys."""
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("zsre", "counterfact", "longform") \
        else ("", "", spec)
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: expected a non-empty JSON list of records")
    kind = kind or ("counterfact" if "requested_rewrite" in raw[0] else "zsre")
    if kind == "longform":
        from .longform import longform as parse  # it builds on this module's records
    else:
        parse = _counterfact if kind == "counterfact" else _zsre
    records, seen = [], set()
    for rec in raw:
        r = parse(rec)
        if r is None:
            continue  # a long-form record needs a template of its relation
        if not r.edit.target.strip():
            continue  # a few zsRE records have an empty new answer: nothing to edit
        if one_per_subject and r.subject in seen:
            continue  # a later edit of the same subject rightly overrides an earlier one (data README)
        seen.add(r.subject)
        records.append(r)
        if n is not None and len(records) >= n:
            break
    (_zsre_other_questions if kind == "zsre" else _other_questions)(raw, records)
    return records


def tokenize_edits(tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest], max_length: int = 64) -> dict:
    """Right-padded (input_ids, attention_mask, labels); labels are -100 everywhere but the target tokens."""
    rows = []
    for req in requests:
        prompt, target = join(req.prompt, req.target)
        p_ids = tokenizer(prompt)["input_ids"]
        t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        if not t_ids:
            raise ValueError(f"target {req.target!r} has no tokens")
        p_ids = p_ids[-max(max_length - len(t_ids), 1):]  # keep the end of an over-long prompt
        rows.append((p_ids + t_ids, [-100] * len(p_ids) + t_ids))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1) mask of the positions whose logits predict an answer token (logits at t score token t+1)."""
    return labels[:, 1:] != -100


def all_per_row(ok: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) whether every answer position of each sequence is `ok` ((N,) over `answer_positions`, row-major)."""
    mask = answer_positions(labels)
    bad = torch.zeros(len(labels), device=ok.device).index_add(0, mask.nonzero()[:, 0], (~ok).float())
    return bad == 0


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean NLL of the labelled tokens, shape (B,), from `answer_logits` (N, V) in row-major order."""
    mask = answer_positions(labels)
    nll = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][mask], reduction="none")
    rows = mask.nonzero()[:, 0]
    return torch.zeros(len(labels), device=nll.device).index_add(0, rows, nll) / mask.sum(1).clamp(min=1)


def answer_kl(pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of KL(p_pre ‖ p_post), both (N, V)."""
    lp, lq = torch.log_softmax(pre.float(), -1), torch.log_softmax(post.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1).mean()


def target_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From `answer_logits` (N, V): per sequence the summed target log-prob and whether every answer token is the
    teacher-forced argmax; and the argmax id at each answer position (N,)."""
    mask = answer_positions(labels)
    tokens, rows = labels[:, 1:][mask], mask.nonzero()[:, 0]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None])[:, 0]
    argmax = logits.argmax(-1)
    summed = torch.zeros(len(labels), device=logits.device).index_add(0, rows, logp)
    return summed, all_per_row(argmax == tokens, labels), argmax
