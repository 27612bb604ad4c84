"""The vocabulary projection of a few positions (projection.py): the same values and gradients as the Linear."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from editor_core.projection import FEW_ROWS, ProjectingLinear, fast_head, project


@pytest.mark.parametrize("rows", [1, 2, 3, 7, FEW_ROWS, FEW_ROWS + 1, 100])
def test_project_is_the_linear_in_value_and_gradient(rows):
    torch.manual_seed(0)
    head = nn.Linear(48, 500, bias=False).requires_grad_(False)
    hidden = torch.randn(rows, 48, requires_grad=True)
    ours, theirs = project(head, hidden), head(hidden)
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(theirs)
    (a,) = torch.autograd.grad(ours, hidden, g)
    (b,) = torch.autograd.grad(theirs, hidden, g)
    torch.testing.assert_close(a, b)


def test_project_keeps_a_bias_and_leading_dimensions():
    head = nn.Linear(16, 40).requires_grad_(False)
    hidden = torch.randn(3, 1, 16)
    torch.testing.assert_close(project(head, hidden), head(hidden))


def test_a_trained_head_gets_its_weights_gradient():
    head = nn.Linear(16, 40, bias=False)  # requires grad: the usual product, whose backward reaches the weight
    project(head, torch.randn(4, 16)).sum().backward()
    assert head.weight.grad is not None


def test_fast_head_keeps_the_tied_weight_and_survives_a_copy(llama_dir):
    from editor_core import load_base_model

    model, tok = load_base_model(str(llama_dir))
    head = model.get_output_embeddings()
    assert type(head) is ProjectingLinear
    fast_head(model)  # twice is harmless
    assert type(model.get_output_embeddings()) is ProjectingLinear
    if model.config.tie_word_embeddings:
        assert head.weight is model.get_input_embeddings().weight
    shadow = copy.deepcopy(model)
    assert type(shadow.get_output_embeddings()) is ProjectingLinear
    enc = tok(["a b c d e f", "a b", "c"], return_tensors="pt", padding=True)
    torch.testing.assert_close(shadow(**enc).logits, model(**enc).logits)
