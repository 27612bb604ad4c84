"""MEND editor networks: identity at init, running normalization, train/eval behaviour, save/load."""
from __future__ import annotations

import json

import pytest
import torch
from editor_support import REQS, identity_editor, trained_like_editor
from safetensors.torch import load_file, save_file

from editor_core.layers import select_layers
from editor_core.mend import CONFIG_FILE, WEIGHTS_FILE, MENDEditor, RunningNorm


def _random_factors(editor, n: int = 5, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {l.name: (torch.randn(n, l.in_features, generator=g), torch.randn(n, l.out_features, generator=g))
            for l in editor.layers}


def test_fresh_editor_update_is_minus_alpha_sum_of_outer_products(model):
    editor = identity_editor(model, init_alpha=0.5)
    factors = _random_factors(editor)
    delta = editor.transform(factors)
    for layer in editor.layers:
        u, d = factors[layer.name]
        expected = -0.5 * d.T @ u  # (out, in), subtracted as in the paper
        dense = delta.dense(layer.name)
        torch.testing.assert_close(dense, expected.T if layer.transposed else expected, rtol=1e-5, atol=1e-6)


def test_layers_of_one_shape_share_a_network_with_their_own_mode(model):
    editor = identity_editor(model)
    shapes = {l.shape_key for l in editor.layers}
    assert set(editor.nets) == shapes and len(shapes) < len(editor.layers)  # sharing actually happens
    for key in shapes:
        modes = [editor.mode[l.name] for l in editor.layers if l.shape_key == key]
        assert modes == list(range(len(modes)))
        assert editor.nets[key].blocks[0].scale.shape[0] == len(modes)


def test_running_norm_matches_torch_mean_and_var_of_all_rows():
    norm = RunningNorm(6)
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, 6, generator=g) * 3 + 5 for n in (1, 7, 2, 30, 4)]  # uneven sizes, offset mean
    for c in chunks:
        norm.update(c)
    rows = torch.cat(chunks).double()
    assert norm.count.item() == len(rows)
    torch.testing.assert_close(norm.mean, rows.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm.m2 / (norm.count - 1), rows.var(0), rtol=1e-10, atol=1e-12)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(norm(x), (x - rows.mean(0)) / (rows.std(0) + 1e-7))


def test_running_norm_is_identity_until_two_rows():
    norm = RunningNorm(4)
    x = torch.randn(3, 4)
    assert torch.equal(norm(x), x)
    norm.update(torch.randn(1, 4))
    assert torch.equal(norm(x), x)  # one row has no variance: dividing by it would blow up
    norm.update(torch.randn(1, 4))
    assert not torch.equal(norm(x), x)


def test_running_norm_update_with_no_rows_changes_nothing():
    # A batch can yield no token rows (e.g. prompts with no tokens): that must not poison the statistics with 0/0.
    norm = RunningNorm(3)
    norm.update(torch.randn(4, 3))
    saved = {k: v.clone() for k, v in norm.state_dict().items()}
    norm.update(torch.empty(0, 3))
    for k, v in norm.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_statistics_move_in_train_mode_only(llama, tokenizer):
    editor = identity_editor(llama)
    factors = _random_factors(editor)
    editor.transform(factors)  # eval mode
    assert all(n.norm_u.count == 0 and n.norm_d.count == 0 for n in editor.nets.values())
    editor.train()
    editor.transform(factors)
    counts = {k: int(n.norm_u.count) for k, n in editor.nets.items()}
    sharing = {k: sum(l.shape_key == k for l in editor.layers) for k in editor.nets}
    assert counts == {k: 5 * sharing[k] for k in editor.nets}  # each layer's 5 rows, once per layer of that shape
    with pytest.raises(RuntimeError, match="eval"):
        editor.compute_delta(llama, tokenizer, REQS[:1])  # training mode would move the statistics


def test_constructor_rejects_config_layers_that_differ(llama):
    layers = select_layers(llama)
    editor = identity_editor(llama)
    cfg = editor.cfg
    cfg.layers = list(reversed(cfg.layers))
    with pytest.raises(ValueError, match="differ"):
        MENDEditor(cfg, layers)


def _assert_same_state(a: MENDEditor, b: MENDEditor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("precond", [None, 0.01], ids=["plain", "preconditioned"])
def test_save_load_round_trip_is_bit_exact(model, tokenizer, tmp_path, precond):
    editor = trained_like_editor(model, tokenizer, precond_lambda=precond)
    if precond is not None:
        editor.fit_preconditioner(model, tokenizer, REQS)
        assert not torch.equal(editor.precond_0, torch.eye(editor.layers[0].in_features, dtype=torch.float16))
    editor.save(tmp_path, extra={"step": 7})
    back = MENDEditor.load(tmp_path, model)
    _assert_same_state(editor, back)
    assert not back.training and back.cfg == editor.cfg and back.fingerprint() == editor.fingerprint()
    assert all(n.norm_u.count > 0 for n in back.nets.values())  # the statistics came back, not zeros
    doc = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert doc["step"] == 7 and doc["config"]["layers"] == editor.cfg.layers
    # Same update from the loaded editor: what the service computes after a restart.
    for n, (l, r) in editor.compute_delta(model, tokenizer, REQS).factors.items():
        l2, r2 = back.compute_delta(model, tokenizer, REQS).factors[n]
        assert torch.equal(l, l2) and torch.equal(r, r2)


def test_half_precision_save_keeps_statistics_in_float64(llama, tokenizer, tmp_path):
    editor = trained_like_editor(llama, tokenizer)
    editor.save(tmp_path, dtype=torch.float16)
    stored = load_file(tmp_path / WEIGHTS_FILE)
    assert stored["log_alpha"].dtype == torch.float16
    back = MENDEditor.load(tmp_path, llama)
    for k in editor.nets:
        for part in ("norm_u", "norm_d"):
            for buf in ("count", "mean", "m2"):
                key = f"nets.{k}.{part}.{buf}"
                assert stored[key].dtype == torch.float64
                assert torch.equal(back.state_dict()[key], editor.state_dict()[key])


def test_load_fails_on_missing_weights_and_tolerates_unknown(llama, tokenizer, tmp_path, caplog):
    identity_editor(llama).save(tmp_path)
    state = load_file(tmp_path / WEIGHTS_FILE)
    save_file({**state, "future.weight": torch.zeros(1)}, tmp_path / WEIGHTS_FILE)
    MENDEditor.load(tmp_path, llama)
    assert "future.weight" in caplog.text
    state.pop("log_alpha")
    save_file(state, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ValueError, match="log_alpha"):
        MENDEditor.load(tmp_path, llama)

