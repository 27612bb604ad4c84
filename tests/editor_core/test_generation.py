"""Sampling (generation.pick and draw): each request's own generator, the nucleus, the distribution drawn from."""
from __future__ import annotations

import torch

from editor_core.generation import NUCLEUS_GUESS, draw, pick


def test_draw_follows_the_weights_and_never_takes_a_zero():
    gen = torch.Generator().manual_seed(0)
    weights = torch.tensor([1.0, 0.0, 6.0, 3.0, 0.0], dtype=torch.float64)
    n = 20_000
    counts = torch.bincount(torch.tensor([draw(weights, gen) for _ in range(n)]), minlength=5).double()
    assert counts[1] == counts[4] == 0
    assert torch.allclose(counts / n, weights / weights.sum(), atol=0.015)


def test_a_generator_seeded_alike_draws_alike():
    logits = torch.randn(1000)
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [pick(logits, 0.9, 0.8, a) for _ in range(50)] == [pick(logits, 0.9, 0.8, b) for _ in range(50)]


def test_the_nucleus_is_the_smallest_set_with_mass_top_p_however_large():
    gen = torch.Generator().manual_seed(1)
    for size in (50, 4 * NUCLEUS_GUESS):  # inside the first guess, and past it (the full sort)
        probs = torch.softmax(torch.linspace(0, -3, size), 0)  # token i is the i-th most likely
        mass = probs.cumsum(0)
        last = int((mass < 0.9).sum())  # the token that crosses 0.9 is the last one in
        got = {pick(probs.log(), 1.0, 0.9, gen) for _ in range(3000)}
        assert max(got) == last and min(got) == 0
    assert {pick(torch.tensor([0.0, 5.0, 1.0]), 0.0, 0.5, gen) for _ in range(10)} == {1}  # greedy
