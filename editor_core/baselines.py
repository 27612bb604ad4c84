"""Fine-tuning baselines (FT and FT+KL, as in the MEND paper's App. C) producing the same LowRankDelta."""
from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import EditRequest, answer_kl, target_nll, target_scores, tokenize_edits
from .delta import LowRankDelta, restore, snapshot
from .layers import EditedLayer
from .scoring import answer_logits


def _as_delta(diff: dict[str, torch.Tensor]) -> LowRankDelta:
    """A dense ΔW as exact factors: an identity on its smaller side."""
    factors = {}
    for name, d in diff.items():
        out_f, in_f = d.shape
        factors[name] = (torch.eye(out_f), d) if out_f <= in_f else (d, torch.eye(in_f))
    return LowRankDelta(factors)


def finetune_delta(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, layers: list[EditedLayer],
                   requests: list[EditRequest], loc: list[EditRequest] | None = None, steps: int = 25,
                   lr: float = 5e-4, c_kl: float = 1.0, max_length: int = 64) -> LowRankDelta:
    """Adam on the edited matrices until every target is the teacher-forced argmax, or `steps` run out.

    With `loc`, adds c_kl · KL(pre ‖ post) at those prompts' answers (FT+KL), as MEND's training does. The model is left
    as it was.
    """
    names = [l.name for l in layers]
    params = dict(model.named_parameters())
    base = snapshot(model, names)
    dev = model.device
    eb = {k: v.to(dev) for k, v in tokenize_edits(tokenizer, requests, max_length).items()}
    lb = {k: v.to(dev) for k, v in tokenize_edits(tokenizer, loc, max_length).items()} if loc else None
    with torch.no_grad():
        pre_loc = answer_logits(model, lb) if lb else None
    trainable = [params[n] for n in names]
    opt = torch.optim.Adam(trainable, lr=lr)
    try:
        for p in trainable:
            p.requires_grad_(True)
        for _ in range(steps):
            logits = answer_logits(model, eb)
            if target_scores(logits.detach(), eb["labels"])[1].all():
                break
            loss = target_nll(logits, eb["labels"]).mean()
            if lb is not None:
                loss = loss + c_kl * answer_kl(pre_loc, answer_logits(model, lb))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        diff = {n: (params[n].detach().float() - base[n].float()).cpu() for n in names}
    finally:
        for p in trainable:
            p.requires_grad_(False)
            p.grad = None
        restore(model, base)
    return _as_delta(diff)
