"""Layer selection: the default MLP matrices, globs, and clear errors."""
from __future__ import annotations

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from editor_core.layers import select_layers


def test_default_llama_is_gate_up_down_of_last_three_blocks(llama):
    layers = select_layers(llama)
    assert [l.name for l in layers] == [f"model.layers.{b}.mlp.{p}.weight"
                                        for b in (1, 2, 3) for p in ("gate_proj", "up_proj", "down_proj")]
    assert [l.block for l in layers] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert not any(l.transposed for l in layers)
    down = layers[2]
    assert (down.out_features, down.in_features) == tuple(llama.get_parameter(down.name).shape) == (64, 128)


def test_default_gpt2_is_conv1d_fc_and_proj_transposed(gpt2):
    layers = select_layers(gpt2)
    assert [l.name for l in layers] == [f"transformer.h.{b}.mlp.{p}.weight"
                                        for b in (1, 2, 3) for p in ("c_fc", "c_proj")]
    assert all(l.transposed for l in layers)
    fc = layers[0]  # Conv1D stores (in, out): 48 -> 192
    assert (fc.in_features, fc.out_features) == tuple(gpt2.get_parameter(fc.name).shape) == (48, 192)
    assert fc.shape_key == "192x48"


def test_globs_and_exact_names(llama):
    layers = select_layers(llama, ["model.layers.*.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"])
    assert [l.name for l in layers] == ["model.layers.0.self_attn.q_proj.weight"] + [
        f"model.layers.{b}.mlp.down_proj.weight" for b in range(4)]  # model order, not pattern order
    assert [l.block for l in layers] == [0, 0, 1, 2, 3]


@pytest.mark.parametrize("patterns, message", [
    (["model.layers.*.mlp.nonexistent.weight"], "no parameter matches"),
    (["model.layers.1.mlp.down_proj.weight", "typo.weight"], "typo.weight"),
    (["model.layers.1.input_layernorm.weight"], "only Linear and Conv1D"),
    (["model.embed_tokens.weight"], "only Linear and Conv1D"),
])
def test_bad_patterns_give_clear_errors(llama, patterns, message):
    with pytest.raises(ValueError, match=message):
        select_layers(llama, patterns)


def test_biases_are_refused(gpt2):
    with pytest.raises(ValueError, match=r"only \.weight matrices.*c_fc\.bias"):
        select_layers(gpt2, ["transformer.h.1.mlp.c_fc.*"])


def _tiny_opt(tokenizer) -> OPTForCausalLM:
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                    vocab_size=len(tokenizer), max_position_embeddings=64, word_embed_proj_dim=32))


def test_model_without_mlp_says_what_to_pass(tokenizer):
    opt = _tiny_opt(tokenizer)  # OPT's blocks hold fc1/fc2 directly: no `mlp` to find
    with pytest.raises(ValueError, match=r"pass parameter names or globs, e\.g\. layers=\['model\.decoder\.layers\.\*"):
        select_layers(opt)
    layers = select_layers(opt, ["model.decoder.layers.*.fc*.weight"])  # and what it says works
    assert [(l.block, l.in_features, l.out_features) for l in layers] == [
        (0, 32, 64), (0, 64, 32), (1, 32, 64), (1, 64, 32)]
