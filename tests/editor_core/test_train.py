"""Editor training end to end on a tiny model: checkpoints, and a resume that continues (never resets) the
normalization statistics, the step counter and the optimizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from editor_support import trained_like_editor
from safetensors.torch import load_file

from editor_core.data import EditRequest, load_records, tokenize_edits
from editor_core.layers import first_block, select_layers
from editor_core.model import load_base_model
from editor_core.prefix_cache import PrefixCache
from editor_core.train import TrainConfig, edit_losses, train

WARMUP = 2


def _config(llama_dir: Path, data_files: dict, out: Path, steps: int) -> TrainConfig:
    # batch_size = every training record (3 zsRE + 2 CounterFact), so each batch has a known number of token rows.
    files = [f"zsre:{data_files['zsre']}", f"counterfact:{data_files['counterfact']}"]
    return TrainConfig(model=str(llama_dir), train=files, dev=[f"zsre:{data_files['zsre']}"], out=str(out), rank=4,
                       steps=steps, batch_size=5, n_loc=3, threads=1, warmup_batches=WARMUP, precond_prompts=4,
                       val_every=2, val_n=2, init_alpha=1e-3)


def _rows_per_batch(cfg: TrainConfig, tokenizer) -> int:
    """Token rows the editor sees per batch: each edit's real tokens before its last target token."""
    recs = [r for spec in cfg.train for r in load_records(spec)]
    assert len(recs) == cfg.batch_size
    return sum(tokenize_edits(tokenizer, [r.edit])["input_ids"].shape[1] - 1 for r in recs)


def _counts(path: Path) -> dict[str, float]:
    state = load_file(path / "last" / "editor.safetensors")
    return {k: float(v) for k, v in state.items() if k.endswith(".count")}


def _expected_counts(llama_dir: Path, batches: int, rows: int) -> dict[str, float]:
    model, _ = load_base_model(str(llama_dir))
    sharing: dict[str, int] = {}
    for l in select_layers(model):
        sharing[l.shape_key] = sharing.get(l.shape_key, 0) + 1
    # Each layer of a shape updates that shape's statistics with its rows, every warm-up batch and every step.
    return {f"nets.{k}.{part}.count": float(batches * rows * m)
            for k, m in sharing.items() for part in ("norm_u", "norm_d")}


@pytest.fixture(scope="module")
def runs(llama_dir, data_files, tmp_path_factory):
    """One training run of 2 steps, then the same folder resumed to 4; what was on disk after each."""
    out = tmp_path_factory.mktemp("run")
    train(_config(llama_dir, data_files, out, 2))
    first = {"counts": _counts(out), "state": json.loads((out / "train_state.json").read_text()),
             "weights": load_file(out / "last" / "editor.safetensors")}
    train(_config(llama_dir, data_files, out, 4))
    second = {"counts": _counts(out), "state": json.loads((out / "train_state.json").read_text()),
              "weights": load_file(out / "last" / "editor.safetensors")}
    return out, first, second


def test_first_run_writes_checkpoints_with_warmed_statistics(runs, llama_dir, data_files, tokenizer):
    out, first, _ = runs
    rows = _rows_per_batch(_config(llama_dir, data_files, out, 2), tokenizer)
    assert first["counts"] == _expected_counts(llama_dir, WARMUP + 2, rows)
    assert first["state"]["step"] == 2
    assert (out / "best" / "editor.safetensors").exists() and (out / "best" / "editor.json").exists()


def test_resume_continues_statistics_steps_and_optimizer(runs, llama_dir, data_files, tokenizer):
    out, first, second = runs
    rows = _rows_per_batch(_config(llama_dir, data_files, out, 4), tokenizer)
    # Not reset (2 steps' rows) and not re-warmed (WARMUP + 2): the first run's rows plus two more steps.
    assert second["counts"] == _expected_counts(llama_dir, WARMUP + 4, rows)
    state = second["state"]
    assert state["step"] == 4
    assert [h["step"] for h in state["history"] if "loss" in h] == [1, 2, 3, 4]
    assert [h["step"] for h in state["history"] if "val" in h] == [2, 4]
    assert state["optimizer_scalars"]["0.step"] == 4.0  # Adam's bias correction continues too
    assert json.loads((out / "last" / "editor.json").read_text())["step"] == 4


def test_resume_keeps_the_preconditioner_and_trains_on(runs):
    _, first, second = runs
    precond = [k for k in first["weights"] if k.startswith("precond_")]
    assert precond and all(torch.equal(first["weights"][k], second["weights"][k]) for k in precond)
    assert not torch.equal(first["weights"]["log_alpha"], second["weights"]["log_alpha"])  # steps 3-4 did train
    assert all(torch.isfinite(v).all() for v in second["weights"].values())


def test_training_losses_and_gradients_equal_with_and_without_the_prefix_cache(model, tokenizer, data_files):
    recs = load_records(f"zsre:{data_files['zsre']}")
    edits = [r.edit for r in recs]
    outer = edits + [EditRequest(r.rephrases[0], r.edit.target) for r in recs]
    loc = [q for r in recs for q in r.loc]
    editor = trained_like_editor(model, tokenizer)  # eval mode: both passes see the same statistics
    editor.log_alpha.data.fill_(-2.0)  # a step large enough that the KL term is far from zero
    results = []
    for cache in (None, PrefixCache(model, first_block(editor.layers))):
        editor.zero_grad(set_to_none=True)
        l_edit, l_loc, _ = edit_losses(model, tokenizer, editor, edits, outer, loc, cache, 64)
        (l_edit + l_loc).backward()
        results.append((l_edit.item(), l_loc.item(), {n: p.grad.clone() for n, p in editor.named_parameters()}))
    (e0, k0, g0), (e1, k1, g1) = results
    assert k0 > 1e-6 and e1 == pytest.approx(e0, rel=1e-5) and k1 == pytest.approx(k0, rel=1e-4)
    assert g0["log_alpha"].abs().sum() > 0  # the step is learned: its gradient is not cut off
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-3, atol=1e-6 * float(g0[n].abs().max()) + 1e-12)
