"""Teacher-forced scores of targets under a model: what /edit reports and what evaluation counts."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import EditRequest, target_scores, tokenize_edits


@dataclass(frozen=True)
class TargetScore:
    logprob: float  # summed log-probability of the target tokens given the prompt
    exact: bool  # every target token is the teacher-forced argmax (whole-answer match, as in the paper)
    argmax: tuple[int, ...] = ()  # the teacher-forced argmax token at each target position: locality compares them


@torch.no_grad()
def score_targets(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest],
                  max_length: int = 64) -> list[TargetScore]:
    batch = {k: v.to(model.device) for k, v in tokenize_edits(tokenizer, requests, max_length).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp, exact, argmax = target_scores(logits, batch["labels"])
    answer = batch["labels"][:, 1:] != -100
    return [TargetScore(float(a), bool(b), tuple(ids[m].tolist())) for a, b, ids, m in zip(logp, exact, argmax, answer)]
