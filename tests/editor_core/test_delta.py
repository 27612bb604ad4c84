"""LowRankDelta: apply/revert, snapshot/restore, batching, bytes, and refusing non-finite updates."""
from __future__ import annotations

import pytest
import torch
from editor_support import REQS, identity_editor, trained_like_editor
from safetensors.torch import save as st_save

from editor_core.delta import LowRankDelta, NonFiniteDeltaError, restore, snapshot
from editor_core.model import model_fingerprint


def _delta(model, tokenizer, alpha: float = 1.0) -> LowRankDelta:
    return identity_editor(model, init_alpha=alpha).compute_delta(model, tokenizer, REQS)


def _weights(model, delta) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in delta.factors}


def test_apply_changes_weights_by_dense_delta_and_revert_restores(model, tokenizer):
    delta = _delta(model, tokenizer)
    before = _weights(model, delta)
    delta.apply(model)
    after = _weights(model, delta)
    for n in delta.factors:
        torch.testing.assert_close(after[n] - before[n], delta.dense(n), rtol=1e-4, atol=1e-6)
        assert not torch.equal(after[n], before[n])
    delta.revert(model)
    for n, w in _weights(model, delta).items():
        torch.testing.assert_close(w, before[n], rtol=0, atol=1e-6)


def test_snapshot_restore_is_bit_exact(model, tokenizer):
    delta = _delta(model, tokenizer)
    base_fp = model_fingerprint(model)
    saved = snapshot(model, list(delta.factors))
    for _ in range(3):
        delta.apply(model)
    assert model_fingerprint(model) != base_fp
    restore(model, saved)
    assert model_fingerprint(model) == base_fp


@pytest.mark.parametrize("trained", [False, True], ids=["identity", "trained-like"])
def test_batched_delta_equals_stacked_single_deltas(model, tokenizer, trained):
    editor = trained_like_editor(model, tokenizer) if trained else identity_editor(model)
    editor.log_alpha.data.fill_(0.0)  # alpha = 1: differences are not hidden by a tiny step
    batched = editor.compute_delta(model, tokenizer, REQS)
    stacked = LowRankDelta.stack([editor.compute_delta(model, tokenizer, [r]) for r in REQS])
    for n in batched.factors:
        d = stacked.dense(n)
        assert d.abs().max() > 0
        torch.testing.assert_close(batched.dense(n), d, rtol=1e-4, atol=1e-5 * float(d.abs().max()))


def test_stack_rejects_deltas_of_different_parameters():
    a = LowRankDelta({"w": (torch.ones(2, 1), torch.ones(1, 2))})
    b = LowRankDelta({"v": (torch.ones(2, 1), torch.ones(1, 2))})
    with pytest.raises(ValueError, match="different parameters"):
        LowRankDelta.stack([a, b])


def test_bytes_round_trip_is_bit_exact(llama, tokenizer):
    delta = _delta(llama, tokenizer)
    delta.meta = {"edit_id": "e1", "note": "ü"}
    back = LowRankDelta.from_bytes(delta.to_bytes())
    assert back.meta == delta.meta and list(back.factors) == sorted(delta.factors)
    for n, (left, right) in delta.factors.items():
        assert torch.equal(back.factors[n][0], left) and torch.equal(back.factors[n][1], right)
        assert back.factors[n][0].dtype == left.dtype


def test_from_bytes_refuses_bytes_without_the_format_stamp():
    plain = st_save({"w::left": torch.ones(2, 1), "w::right": torch.ones(1, 2)})
    with pytest.raises(ValueError, match="format stamp"):
        LowRankDelta.from_bytes(plain)
    with pytest.raises(ValueError, match="format stamp"):
        LowRankDelta.from_bytes(st_save({"w::left": torch.ones(1)}, metadata={"format": "something-else"}))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("bad_layer", [0, 1], ids=["first-layer", "second-layer"])
def test_apply_refuses_non_finite_delta_and_writes_nothing(model, tokenizer, bad, bad_layer):
    delta = _delta(model, tokenizer)
    name = list(delta.factors)[bad_layer]
    delta.factors[name][0][0, 0] = bad  # one poisoned entry; the other layers are fine
    before = model_fingerprint(model)
    for write in (delta.apply, delta.revert, delta.check):
        with pytest.raises(NonFiniteDeltaError):
            write(model)
        assert model_fingerprint(model) == before  # not even the good layers before the bad one


def test_apply_refuses_overflow_to_inf(llama):
    name = "model.layers.3.mlp.down_proj.weight"
    w = dict(llama.named_parameters())[name]
    huge = LowRankDelta({name: (torch.full((w.shape[0], 1), 3e38), torch.full((1, w.shape[1]), 1.0))})
    huge.apply(llama)  # finite: 3e38 fits in float32 ...
    once = model_fingerprint(llama)
    with pytest.raises(NonFiniteDeltaError):
        huge.apply(llama)  # ... but twice that does not
    assert model_fingerprint(llama) == once


def test_apply_refuses_unknown_parameter_and_wrong_shape(llama):
    before = model_fingerprint(llama)
    with pytest.raises(KeyError):
        LowRankDelta({"no.such.weight": (torch.ones(2, 1), torch.ones(1, 2))}).apply(llama)
    with pytest.raises(ValueError, match="shape"):
        LowRankDelta({"model.layers.3.mlp.down_proj.weight": (torch.ones(2, 1), torch.ones(1, 2))}).apply(llama)
    assert model_fingerprint(llama) == before


def test_compressed_keeps_the_update_at_its_numerical_rank(llama, tokenizer):
    delta = _delta(llama, tokenizer)
    doubled = LowRankDelta.stack([delta, delta])  # rank-deficient factors: 2k columns, rank k at most
    small = doubled.compressed(rel_tol=1e-6)
    assert small.rank <= delta.rank < doubled.rank
    for n in delta.factors:
        torch.testing.assert_close(small.dense(n), 2 * delta.dense(n), rtol=1e-4, atol=1e-7)


def test_norm_matches_dense_frobenius_norm(gpt2, tokenizer):
    delta = _delta(gpt2, tokenizer)
    expected = torch.sqrt(sum(delta.dense(n).double().pow(2).sum() for n in delta.factors))
    assert delta.norm() == pytest.approx(float(expected), rel=1e-5)
    assert delta.nbytes == sum(l.numel() * 4 + r.numel() * 4 for l, r in delta.factors.values())


def test_compressed_truncation_drops_small_directions_and_casts(llama, tokenizer):
    delta = _delta(llama, tokenizer)
    name = next(iter(delta.factors))
    full = delta.compressed(0.0)
    cut = delta.compressed(0.5, torch.float16)
    assert cut.factors[name][0].dtype == torch.float16
    assert cut.factors[name][0].shape[1] <= full.factors[name][0].shape[1]
    s = torch.linalg.svdvals(delta.dense(name).double())
    kept = int((s > 0.5 * s[0]).sum())
    assert cut.factors[name][0].shape[1] == kept  # exactly the directions above the threshold


def test_compressed_leaves_a_non_finite_delta_for_apply_to_refuse(llama):
    name = "model.layers.3.mlp.down_proj.weight"
    p = dict(llama.named_parameters())[name]
    bad = LowRankDelta({name: (torch.full((p.shape[0], 1), float("inf")), torch.ones(1, p.shape[1]))})
    assert bad.compressed(0.03, torch.float16) is bad
    with pytest.raises(NonFiniteDeltaError):
        bad.apply(llama)
