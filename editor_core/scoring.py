"""Teacher-forced scores of targets under a model: what /edit reports and what evaluation counts."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import EditRequest, answer_positions, target_scores, tokenize_edits


def answer_logits(model: PreTrainedModel, batch: dict, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """(N, V) logits at the N positions that predict an answer token, row-major; `params` replace weights.

    Only these positions are ever scored, and on a small model the output layer is most of the cost past the
    frozen prefix (49k × 576 on SmolLM2): projecting the answer positions alone gives the same values several
    times faster. Assumes logits = output embeddings(last hidden state), true of the Llama and GPT-2 families.
    """
    base = model.base_model
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if params:
        prefix = model.base_model_prefix + "."
        out = functional_call(base, {n.removeprefix(prefix): p for n, p in params.items()}, (), kw)
    else:
        out = base(**kw)
    hidden = out.last_hidden_state[:, :-1][answer_positions(batch["labels"])]
    return model.get_output_embeddings()(hidden)


@dataclass(frozen=True)
class TargetScore:
    logprob: float  # summed log-probability of the target tokens given the prompt
    exact: bool  # every target token is the teacher-forced argmax (whole-answer match, as in the paper)
    argmax: tuple[int, ...] = ()  # the teacher-forced argmax token at each target position: locality compares them


@torch.no_grad()
def score_targets(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest],
                  max_length: int = 64) -> list[TargetScore]:
    batch = {k: v.to(model.device) for k, v in tokenize_edits(tokenizer, requests, max_length).items()}
    logp, exact, argmax = target_scores(answer_logits(model, batch), batch["labels"])
    ids = argmax.split(answer_positions(batch["labels"]).sum(1).tolist())
    return [TargetScore(float(a), bool(b), tuple(i.tolist())) for a, b, i in zip(logp, exact, ids)]
