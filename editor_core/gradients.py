"""The per-token factors of an edit's gradient: for each edited layer, inputs u_t and output gradients δ_t."""
from __future__ import annotations

import contextlib

import torch
from transformers import PreTrainedModel

from .data import target_nll
from .hooks import CaptureLayers
from .layers import EditedLayer, find_blocks, first_block
from .prefix_cache import PrefixCache
from .scoring import answer_logits


def grad_from_block(model: PreTrainedModel, layers: list[EditedLayer]):
    _, blocks = find_blocks(model)
    return blocks[first_block(layers)]


def token_factors(
    model: PreTrainedModel, layers: list[EditedLayer], batch: dict, prefix: PrefixCache | None = None
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """One forward and one backward (through the edited blocks only) of the edit loss.

    The loss is the sum over sequences of each one's mean target NLL, so an edit's factors do not depend on
    which other edits share its batch. Returns {name: (u (N, in), δ (N, out))} over the N tokens that carry
    gradient (real tokens before each sequence's last target), plus each row's sequence index.
    The model's weights are not changed and no parameter's .grad is touched.
    """
    modules = {l.name: model.get_submodule(l.module) for l in layers}
    # The prefix's input is injected first (its hook is registered first), then made the leaf the backward stops at.
    with (prefix.skipping(batch) if prefix else contextlib.nullcontext(), torch.enable_grad(),
          CaptureLayers(modules, grad_from_block(model, layers)) as cap):
        loss = target_nll(answer_logits(model, batch), batch["labels"]).sum()
        grads = torch.autograd.grad(loss, [cap.outputs[l.name] for l in layers])
    # Logits at t score token t+1, so δ is exactly zero from a sequence's last target on (causal attention)
    # and on padding: drop those rows.
    labelled = batch["labels"] != -100
    last = labelled.shape[1] - 1 - labelled.flip(1).int().argmax(1)
    pos = torch.arange(labelled.shape[1], device=labelled.device)
    keep = (pos[None, :] < last[:, None]) & batch["attention_mask"].bool()
    seq = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]
    # Under a device map each layer's rows stay on its own device; the editor gathers them.
    factors = {l.name: (cap.inputs[l.name][keep.to(g.device)].detach().float(), g[keep.to(g.device)].float())
               for l, g in zip(layers, grads)}
    return factors, seq
