"""Edits as files other tools load: a PEFT LoRA adapter of low-rank deltas, and a merged checkpoint.

A LowRankDelta's ΔW = left @ right in the weight's storage orientation. PEFT's LoRA adds lora_B @ lora_A (times
alpha / r) to a weight stored (out, in), and for GPT-2's Conv1D, stored (in, out), its transpose
(`fan_in_fan_out`). So lora_B = left, lora_A = right for nn.Linear, and lora_B = rightᵀ, lora_A = leftᵀ for
Conv1D. Deltas on one matrix add up by concatenating their factors along the rank axis, and an alpha equal to
each module's rank (`alpha_pattern`) makes PEFT's scaling exactly 1.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from .delta import LowRankDelta, NonFiniteDeltaError, WeightsView

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # the names PEFT loads
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before a module's name in its saved state dict


def lora_weights(deltas: list[LowRankDelta], model: nn.Module) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]],
                                                                         bool]:
    """({module name: (lora_A, lora_B)}, fan_in_fan_out) of the sum of these deltas, in fp32. Raises ValueError for a
    parameter that is not the weight of a Linear or Conv1D of `model`, and NonFiniteDeltaError if a summed ΔW is
    not finite (a "safe" export, as PEFT's safe_merge)."""
    pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for delta in deltas:
        for name, (left, right) in delta.factors.items():
            pairs.setdefault(name, []).append((left.float(), right.float()))
    out, orientations = {}, set()
    for name, factors in pairs.items():
        module_name, conv = _module_of(model, name)
        left, right = torch.cat([l for l, _ in factors], 1), torch.cat([r for _, r in factors], 0)
        if left.shape[1] == 0:
            continue  # nothing to add to this matrix
        a, b = (left.T, right.T) if conv else (right, left)
        weight = model.get_submodule(module_name).weight
        if (b.shape[0], a.shape[1]) != (tuple(weight.shape[::-1]) if conv else tuple(weight.shape)):
            raise ValueError(f"delta for {name} has shape {(left.shape[0], right.shape[1])}, "
                             f"weight has {tuple(weight.shape)}")
        # A float64 sum of finite float32 values cannot overflow: it is NaN/inf iff an element of ΔW is.
        if not torch.isfinite(torch.sum(b @ a, dtype=torch.float64)):
            raise NonFiniteDeltaError(f"the edits' summed delta for {name} is not finite: nothing exported")
        out[module_name] = (a.contiguous(), b.contiguous())
        orientations.add(conv)
    if len(orientations) > 1:  # one fan_in_fan_out per adapter in PEFT
        raise ValueError("the edits touch both Linear and Conv1D weights: PEFT's fan_in_fan_out cannot hold both")
    return out, orientations == {True}


def _module_of(model: nn.Module, name: str) -> tuple[str, bool]:
    """(module name, is Conv1D) of a weight parameter name."""
    module_name = name.removesuffix(".weight")
    try:
        module = model.get_submodule(module_name) if name.endswith(".weight") else None
    except AttributeError:
        module = None
    if not isinstance(module, (nn.Linear, Conv1D)):
        raise ValueError(f"{name} is not the weight of a Linear or Conv1D module of the model: no LoRA form")
    return module_name, isinstance(module, Conv1D)


def to_peft(deltas: list[LowRankDelta], model: nn.Module, out: str | Path,
            metadata: dict[str, str] | None = None) -> Path:
    """Write the sum of `deltas` as a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) into
    `out`: `PeftModel.from_pretrained(model, out)` then computes what `model` with every delta applied does.
    `metadata` goes into the safetensors header. Writes nothing if it raises (see `lora_weights`)."""
    from peft import LoraConfig  # 1.5 s to import: only an export needs it

    weights, fan_in_fan_out = lora_weights(deltas, model)
    if not weights:
        raise ValueError("no edit to export: an adapter of no delta would change nothing")
    # Patterns are regular expressions matched against the end of a module's name: escaped, each names one module.
    ranks = {re.escape(m): a.shape[0] for m, (a, _) in weights.items()}
    config = LoraConfig(r=max(ranks.values()), lora_alpha=max(ranks.values()), target_modules=sorted(weights),
                        rank_pattern=ranks, alpha_pattern=dict(ranks), fan_in_fan_out=fan_in_fan_out,
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", inference_mode=True,
                        # The model it goes on (its folder or hub id): AutoPeftModelForCausalLM loads it alone.
                        base_model_name_or_path=getattr(model, "name_or_path", None) or None)
    out = Path(out)
    config.save_pretrained(str(out))
    tensors = {}
    for module_name, (a, b) in sorted(weights.items()):
        tensors[f"{PEFT_PREFIX}{module_name}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{module_name}.lora_B.weight"] = b
    save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt", **(metadata or {})})
    return out


def merged_weights(deltas: list[LowRankDelta], model: nn.Module,
                   base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The edited matrices with every delta added in turn, by apply's own arithmetic (LowRankDelta.updated), to
    `base` (default: the model's current weights), computed aside. Raises NonFiniteDeltaError if one would not be
    finite, KeyError for a parameter the model lacks."""
    params = dict(model.named_parameters())
    names = list(dict.fromkeys(n for d in deltas for n in d.factors))
    missing = [n for n in names if n not in params or (base is not None and n not in base)]
    if missing:
        raise KeyError(f"model has no parameter {missing[0]!r}")
    weights = {n: (base if base is not None else params)[n] for n in names}
    for delta in deltas:
        weights.update(delta.updated(WeightsView(weights)))
    return weights


def merged(deltas: list[LowRankDelta], model: PreTrainedModel, out: str | Path,
           base: dict[str, torch.Tensor] | None = None, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Write `model` with the edited matrices of `merged_weights` as a safetensors checkpoint (config, weights, and
    the tokenizer if given) that `AutoModelForCausalLM.from_pretrained(out)` loads. The model is not changed."""
    state = {**model.state_dict(), **merged_weights(deltas, model, base)}
    out = Path(out)
    model.save_pretrained(out, state_dict=state)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out

