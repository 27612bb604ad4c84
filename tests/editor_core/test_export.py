"""Exporting deltas: a PEFT adapter that PEFT loads onto the base model, and a merged checkpoint that transformers
loads, each computing what the model with the deltas applied in place computes (Llama's Linear and GPT-2's
transposed Conv1D weights)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from editor_core import select_layers
from editor_core.delta import LowRankDelta, NonFiniteDeltaError, snapshot
from editor_core.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, merged, merged_weights, to_peft

TEXT = "The capital of France is Paris, and the largest planet is Jupiter."


def random_delta(model, rank: int, seed: int) -> LowRankDelta:
    """A delta on each edited matrix, of rank `rank` on the first, one more on the next, ... (PEFT's scaling depends on
    each module's rank), big enough to move the logits well past the tolerance."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    factors = {}
    for i, layer in enumerate(select_layers(model)):
        rows, cols = params[layer.name].shape
        k = rank + i
        factors[layer.name] = (torch.randn(rows, k, generator=g) * 0.1, torch.randn(k, cols, generator=g) * 0.1)
    return LowRankDelta(factors)


@torch.no_grad()
def logits(model, tokenizer) -> torch.Tensor:
    return model(input_ids=tokenizer(TEXT, return_tensors="pt")["input_ids"]).logits[0]


def edited_copy(model, deltas: list[LowRankDelta]):
    edited = copy.deepcopy(model)
    for d in deltas:
        d.apply(edited)
    return edited


def test_the_peft_adapter_on_the_base_model_computes_what_the_edited_model_does(model, tokenizer, tmp_path):
    deltas = [random_delta(model, 2, seed=1), random_delta(model, 3, seed=2)]
    edited = logits(edited_copy(model, deltas), tokenizer)
    assert (edited - logits(model, tokenizer)).abs().max() > 0.05  # the edits are visible

    folder = to_peft(deltas, model, tmp_path / "adapter", metadata={"mend_version": "7"})
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]  # no pickle (.bin)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), folder)
    assert (logits(peft_model, tokenizer) - edited).abs().max() <= 1e-4

    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    n = len(select_layers(model))
    assert sorted(config["rank_pattern"].values()) == [5 + 2 * i for i in range(n)]  # both deltas' ranks, summed
    assert config["alpha_pattern"] == config["rank_pattern"]
    assert config["fan_in_fan_out"] == (type(model).__name__ == "GPT2LMHeadModel")
    with safe_open(folder / ADAPTER_WEIGHTS, "pt") as f:
        assert f.metadata()["mend_version"] == "7"


def test_the_merged_checkpoint_reloads_as_the_edited_model_and_leaves_the_model_alone(model, tokenizer, tmp_path):
    deltas = [random_delta(model, 2, seed=1), random_delta(model, 3, seed=2)]
    edited = edited_copy(model, deltas)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    folder = merged(deltas, model, tmp_path / "merged", tokenizer=tokenizer)
    assert not list(folder.glob("*.bin")) and list(folder.glob("*.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    edited_params, reloaded_params = dict(edited.named_parameters()), dict(reloaded.named_parameters())
    for layer in select_layers(model):  # apply's arithmetic, in the same order: bit for bit
        assert torch.equal(reloaded_params[layer.name], edited_params[layer.name])
    assert (logits(reloaded, tokenizer) - logits(edited, tokenizer)).abs().max() <= 1e-4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_merged_weights_start_from_the_given_base_when_the_model_holds_edits(model):
    # The in-place service holds the edited weights and keeps the base aside: the merge starts from that base.
    deltas = [random_delta(model, 2, seed=1)]
    expected = merged_weights(deltas, model)
    base = snapshot(model, list(deltas[0].factors))
    edited = edited_copy(model, deltas)
    got = merged_weights(deltas, edited, base=base)
    assert all(torch.equal(got[n], expected[n]) for n in expected)


def test_a_non_finite_delta_is_refused_and_nothing_is_written(model, tmp_path):
    bad = random_delta(model, 2, seed=1)
    name = next(iter(bad.factors))
    bad.factors[name][0][0, 0] = float("nan")
    for export in (to_peft, merged):
        with pytest.raises(NonFiniteDeltaError, match="not finite|non-finite"):
            export([random_delta(model, 2, seed=2), bad], model, tmp_path / export.__name__)
        assert not (tmp_path / export.__name__).exists()


def test_a_delta_that_fits_no_lora_module_is_refused(model, tmp_path):
    embedding = next(n for n, p in model.named_parameters() if p.shape[0] == model.config.vocab_size)
    params = dict(model.named_parameters())
    rows, cols = params[embedding].shape
    wrong = LowRankDelta({embedding: (torch.ones(rows, 1), torch.ones(1, cols))})
    with pytest.raises(ValueError, match="not the weight of a Linear or Conv1D"):
        to_peft([wrong], model, tmp_path / "a")
    layer = select_layers(model)[0]
    rows, cols = params[layer.name].shape
    misshapen = LowRankDelta({layer.name: (torch.ones(rows + 1, 1), torch.ones(1, cols))})
    with pytest.raises(ValueError, match="has shape"):
        to_peft([misshapen], model, tmp_path / "b")
    with pytest.raises(ValueError, match="no edit to export"):
        to_peft([], model, tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_the_adapter_names_its_base_model_so_peft_loads_it_alone(model, tokenizer, tmp_path):
    from peft import AutoPeftModelForCausalLM

    model.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    delta = random_delta(base, 2, seed=3)
    folder = to_peft([delta], base, tmp_path / "adapter")
    assert json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == str(tmp_path / "base")
    alone = AutoPeftModelForCausalLM.from_pretrained(folder)
    assert (logits(alone, tokenizer) - logits(edited_copy(base, [delta]), tokenizer)).abs().max() <= 1e-4
