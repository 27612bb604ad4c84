"""Gradient capture: the editor's input is the true gradient, computed without touching the model, and the
backward runs through the edited blocks only."""
from __future__ import annotations

import pytest
import torch
from editor_support import REQS, identity_editor

from editor_core.data import tokenize_edits
from editor_core.gradients import token_factors
from editor_core.layers import find_blocks, first_block
from editor_core.model import model_fingerprint

ALPHA = 1e-3


def true_grads(model, tokenizer, reqs, names: list[str]) -> dict[str, torch.Tensor]:
    """dL/dW by plain autograd on the weights, L = sum over sequences of each one's mean target NLL."""
    batch = tokenize_edits(tokenizer, reqs)
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    try:
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                                    reduction="none")  # -100 labels count zero
            per_seq = nll.sum(1) / (batch["labels"][:, 1:] != -100).sum(1)
            grads = torch.autograd.grad(per_seq.sum(), weights)
    finally:
        for w in weights:
            w.requires_grad_(False)
    return dict(zip(names, grads))


@pytest.mark.parametrize("n_reqs", [1, 2], ids=["single", "padded-batch"])
def test_identity_editor_update_is_minus_alpha_times_gradient(model, tokenizer, n_reqs):
    editor = identity_editor(model, init_alpha=ALPHA)
    delta = editor.compute_delta(model, tokenizer, REQS[:n_reqs])
    grads = true_grads(model, tokenizer, REQS[:n_reqs], [l.name for l in editor.layers])
    for name, g in grads.items():
        dense, expected = delta.dense(name), -ALPHA * g
        assert dense.shape == g.shape  # the weight's own storage orientation ((in, out) for GPT-2's Conv1D)
        cos = torch.nn.functional.cosine_similarity(dense.flatten().double(), expected.flatten().double(), dim=0)
        assert cos > 1 - 1e-5, name
        torch.testing.assert_close(dense, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))


def test_delta_rank_at_most_token_count(model, tokenizer):
    delta = identity_editor(model).compute_delta(model, tokenizer, REQS[:1])
    n_tokens = tokenize_edits(tokenizer, REQS[:1])["input_ids"].shape[1]
    assert n_tokens < 16  # far below the layers' widths, so the bound is what limits the rank
    assert 0 < delta.rank <= n_tokens
    for name in delta.factors:
        assert torch.linalg.matrix_rank(delta.dense(name).double(), rtol=1e-4) <= n_tokens  # fp32 noise aside


def test_factor_rows_are_real_tokens_before_the_last_target(llama, tokenizer):
    editor = identity_editor(llama)
    batch = tokenize_edits(tokenizer, REQS)
    factors, seq = token_factors(llama, editor.layers, batch)
    lengths = batch["attention_mask"].sum(1)  # labels run to each sequence's end: rows = length - 1
    assert seq.tolist() == [0] * (int(lengths[0]) - 1) + [1] * (int(lengths[1]) - 1)
    assert all(u.shape[0] == d.shape[0] == len(seq) for u, d in factors.values())
    # Every kept row carries gradient in some layer (in the last block only the labelled positions do).
    assert sum(d.abs().sum(1) for _, d in factors.values()).gt(0).all()


def test_computing_a_delta_leaves_the_model_unchanged(model, tokenizer):
    before = model_fingerprint(model)
    identity_editor(model, init_alpha=1.0).compute_delta(model, tokenizer, REQS)
    assert model_fingerprint(model) == before
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_backward_stops_at_the_first_edited_block(model, tokenizer):
    editor = identity_editor(model)
    _, blocks = find_blocks(model)
    first = first_block(editor.layers)
    assert first == 1  # the default edits the last 3 of 4 blocks
    fired, below_requires_grad = [], []
    handles = [blocks[0].register_full_backward_hook(lambda *a: fired.append(0)),
               blocks[-1].register_full_backward_hook(lambda *a: fired.append(-1)),
               blocks[0].register_forward_hook(lambda m, a, out: below_requires_grad.append(out.requires_grad))]
    try:
        editor.compute_delta(model, tokenizer, REQS[:1])
    finally:
        for h in handles:
            h.remove()
    assert below_requires_grad == [False]  # no graph is even built below the first edited block
    assert fired == [-1]  # the backward runs through the last block (control) and never reaches block 0
