"""Teacher-forced scores of targets under a model: what /edit reports and what evaluation counts."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch.func import functional_call
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import EditRequest, answer_positions, target_scores, tokenize_edits
from .prefix_cache import PrefixCache
from .projection import project


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
    return project(model.get_output_embeddings(), hidden)



@dataclass(frozen=True)
class TargetScore:
    logprob: float  # summed log-probability of the target tokens given the prompt
    exact: bool  # every target token is the teacher-forced argmax (whole-answer match, as in the paper)
    argmax: tuple[int, ...] = ()  # the teacher-forced argmax token at each target position: locality compares them
    # (n_target, V) log-probabilities at the target positions, fp16 on the CPU, when asked for (a KL needs them)
    logp: torch.Tensor | None = field(default=None, compare=False)

    @property
    def mean_nll(self) -> float:
        return -self.logprob / max(len(self.argmax), 1)


@torch.no_grad()
def score_targets(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest],
                  max_length: int = 64, keep_logp: bool = False,
                  prefix: PrefixCache | None = None) -> list[TargetScore]:
    """The one teacher-forced scorer: what /edit and /score report and what `mend eval` counts. `prefix`: the first
    edited block's input of sequences scored before (an edit's score after reuses its score before's)."""
    batch = {k: v.to(model.device) for k, v in tokenize_edits(tokenizer, requests, max_length).items()}
    with prefix.skipping(batch) if prefix else contextlib.nullcontext():
        logits = answer_logits(model, batch)
    logp, exact, argmax = target_scores(logits, batch["labels"])
    counts = answer_positions(batch["labels"]).sum(1).tolist()
    rows = (torch.log_softmax(logits.float(), -1).half().cpu().split(counts) if keep_logp
            else [None] * len(requests))
    return [TargetScore(float(a), bool(b), tuple(i.tolist()), r)
            for a, b, i, r in zip(logp, exact, argmax.split(counts), rows)]
