"""Evaluation in its three modes, and the fine-tuning baseline."""
from __future__ import annotations

import pytest
from editor_support import identity_editor

from editor_core.baselines import finetune_delta
from editor_core.data import EditRequest, load_records
from editor_core.evaluate import evaluate, ft_method, mend_method
from editor_core.model import model_fingerprint
from editor_core.scoring import score_targets

COMMON = {"edit", "rephrase", "loc", "loc_token", "loc_kl", "latency_ms_p50", "latency_ms_p95", "fwd_bwd_ms_p50",
          "latency_ratio", "selection", "n"}
COUNTERFACT = {"efficacy", "paraphrase", "neighborhood"}
# Enough Adam steps at a large rate that a tiny random model surely learns one short target (stops once it has).
FT = {"steps": 60, "lr": 1e-2}


@pytest.mark.parametrize("kind", ["zsre", "counterfact"])
@pytest.mark.parametrize("mode", [{"batch_size": 1}, {"batch_size": 2}, {"sequential": 2, "curve": (1,)}],
                         ids=["single", "batch", "sequential"])
def test_modes_return_documented_keys_and_restore_weights(llama, tokenizer, data_files, kind, mode):
    records = load_records(f"{kind}:{data_files[kind]}", n=2)
    editor = identity_editor(llama, init_alpha=1.0)  # a large step: the edits really move the weights
    names = [l.name for l in editor.layers]
    before = model_fingerprint(llama)
    result = evaluate(llama, tokenizer, records, mend_method(llama, tokenizer, editor), names, **mode)
    assert model_fingerprint(llama) == before  # bit-exact, in every mode
    summary = result["summary"]
    assert COMMON | (COUNTERFACT if kind == "counterfact" else set()) <= set(summary)
    assert summary["n"] == 2 and 0 <= summary["edit"] <= 1 and summary["loc_kl"] >= 0
    if "sequential" in mode:
        assert [p["edits"] for p in result["curve"]] == [1, 2]
    else:
        assert result["curve"] == []


def test_weights_restored_when_the_method_fails(llama, tokenizer, data_files):
    records = load_records(f"zsre:{data_files['zsre']}", n=2)
    editor = identity_editor(llama, init_alpha=1.0)
    compute = mend_method(llama, tokenizer, editor)
    calls = []

    def second_fails(recs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("editor failed")
        return compute(recs)

    before = model_fingerprint(llama)
    with pytest.raises(RuntimeError):
        evaluate(llama, tokenizer, records, second_fails, [l.name for l in editor.layers], sequential=2)
    assert model_fingerprint(llama) == before  # the first edit, already applied, was taken back


def test_scores_are_taken_on_the_edited_model(llama, tokenizer, data_files):
    records = load_records(f"zsre:{data_files['zsre']}", n=2)
    editor = identity_editor(llama, init_alpha=1e-9)  # a no-op edit: the random model does not say the target
    names = [l.name for l in editor.layers]
    noop = evaluate(llama, tokenizer, records, mend_method(llama, tokenizer, editor), names)["summary"]
    ft = evaluate(llama, tokenizer, records, ft_method(llama, tokenizer, editor.layers, **FT), names)["summary"]
    assert noop["edit"] == 0.0 and noop["loc"] == 1.0
    assert ft["edit"] == 1.0


def test_finetune_delta_installs_the_target_and_leaves_the_model_alone(model, tokenizer):
    req = EditRequest("The capital of France is", "Rome")
    layers = identity_editor(model).layers
    assert not score_targets(model, tokenizer, [req])[0].exact
    before = model_fingerprint(model)
    delta = finetune_delta(model, tokenizer, layers, [req], **FT)
    assert model_fingerprint(model) == before
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    delta.apply(model)
    assert score_targets(model, tokenizer, [req])[0].exact


def test_finetune_with_kl_keeps_locality_prompts_closer(llama, tokenizer):
    # A long target keeps both runs going all 15 steps (FT stops once the target is the argmax).
    req = EditRequest("The capital of France is", "Rome, a city in the south of Europe")
    loc = [EditRequest("Water boils at", "100 degrees"), EditRequest("The capital of France is", "Paris")]
    layers = identity_editor(llama).layers
    base = [s.logprob for s in score_targets(llama, tokenizer, loc)]
    drift = {}
    for name, kw in {"ft": {}, "ft-kl": {"loc": loc, "c_kl": 10.0}}.items():
        delta = finetune_delta(llama, tokenizer, layers, [req], steps=15, lr=1e-3, **kw)
        delta.apply(llama)
        drift[name] = sum(abs(s.logprob - b) for s, b in zip(score_targets(llama, tokenizer, loc), base))
        delta.revert(llama)
    assert drift["ft-kl"] < 0.9 * drift["ft"]
