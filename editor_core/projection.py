"""The vocabulary projection of a few positions, in the layout that is fast on a CPU.

On a CPU, MKL's float32 product h @ W.T with 2 to ~30 rows is 3-4x slower than the same product taken as
(W @ h.T).T: SmolLM2's 49k x 576 output layer on 4 rows takes 36 ms against 11 ms on this 2-core machine (1 row:
14 ms either way; from ~64 rows the usual layout is as fast). An edit projects a few answer positions about ten
times (the word ends, MEND's forward, each step's check, the scores before and after), and every decoding step
of a batch of generations projects one position per row. The values agree to float32 rounding (5e-5 on logits
of magnitude ~20).
"""
from __future__ import annotations

import torch
from torch import nn

FEW_ROWS = 32  # up to this many rows `project` takes the transposed layout


def project(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """head(hidden) for (..., H) -> (..., V)."""
    w = head.weight
    rows = hidden.numel() // hidden.shape[-1] if hidden.shape[-1] else 0
    if (hidden.device.type != "cpu" or w.dtype != torch.float32 or hidden.dtype != torch.float32
            or not 2 <= rows <= FEW_ROWS or (w.requires_grad and torch.is_grad_enabled())):
        return nn.functional.linear(hidden, w, head.bias)
    logits = _FewRows.apply(hidden.reshape(rows, -1), w).reshape(*hidden.shape[:-1], -1)
    return logits if head.bias is None else logits + head.bias


class _FewRows(torch.autograd.Function):
    """(W @ h.T).T with W frozen. Its backward, g @ W, is F.linear's own layout: the transposed product there is
    the slow one (24 vs 277 ms for 4 rows)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return (weight @ hidden.T).T.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (weight,) = ctx.saved_tensors
        return grad @ weight, None


class ProjectingLinear(nn.Linear):
    """A model's vocabulary projection that projects through `project`, on a contiguous input. With
    `logits_to_keep`, transformers passes it a slice of the hidden states (the last k positions of each row), and
    for several rows in bfloat16 torch's CPU matmul then takes a batched path that copies the (vocabulary x hidden)
    weight over and over: on SmolLM2 a left-padded prefill of 32 rows took 4.3 s instead of 0.5 s, and the edit
    guard's pass over 32 canaries 9.7 s instead of 0.5."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return project(self, hidden.contiguous())


def fast_head(model: nn.Module) -> None:
    """The model's own forwards (generation) project through `project` too: its output layer, if a plain Linear,
    becomes a `ProjectingLinear` over the same weight (a copy of the model keeps it; an accelerate device hook,
    which replaces the instance's forward, keeps its own)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is nn.Linear:
        head.__class__ = ProjectingLinear
