"""Which weight matrices an editor edits, found by module type and shape, never by the model's name."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from .model import check_on_device


@dataclass(frozen=True)
class EditedLayer:
    name: str  # parameter name, e.g. model.layers.29.mlp.down_proj.weight
    module: str  # owning module, e.g. model.layers.29.mlp.down_proj
    block: int  # index of the transformer block that holds it
    in_features: int
    out_features: int
    transposed: bool  # GPT-2's Conv1D stores its weight as (in, out)

    @property
    def shape_key(self) -> str:
        return f"{self.out_features}x{self.in_features}"


def first_block(layers: list[EditedLayer]) -> int:
    """The lowest block any of these layers is in: everything below it is frozen (`PrefixCache`)."""
    return min(layer.block for layer in layers)


def find_blocks(model: PreTrainedModel) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks: the one with num_hidden_layers entries (n_layer for GPT-2)."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and name:
            return name, mod
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}: pass parameter names explicitly")


def _layer_of(model: PreTrainedModel, module_name: str, blocks_name: str) -> EditedLayer:
    module = model.get_submodule(module_name)
    if isinstance(module, Conv1D):
        in_f, out_f, transposed = module.weight.shape[0], module.weight.shape[1], True
    elif isinstance(module, nn.Linear):
        in_f, out_f, transposed = module.in_features, module.out_features, False
    else:
        raise ValueError(f"{module_name} is a {type(module).__name__}; only Linear and Conv1D weights can be edited")
    rest = module_name[len(blocks_name) + 1 :] if module_name.startswith(blocks_name + ".") else ""
    if not rest.split(".")[0].isdigit():
        raise ValueError(f"{module_name} is not inside a transformer block of {blocks_name}")
    return EditedLayer(f"{module_name}.weight", module_name, int(rest.split(".")[0]), in_f, out_f, transposed)


def default_layer_names(model: PreTrainedModel, n_blocks: int = 3) -> list[str]:
    """The MLP matrices of the last n blocks (Llama/Mistral/Qwen2, GPT-2, GPT-J, GPT-Neo, GPT-NeoX)."""
    blocks_name, blocks = find_blocks(model)
    names = []
    for i in range(len(blocks) - n_blocks, len(blocks)):
        mlp = getattr(blocks[i], "mlp", None)
        if mlp is None:
            break
        names += [f"{blocks_name}.{i}.mlp.{n}.weight" for n, m in mlp.named_children()
                  if isinstance(m, (nn.Linear, Conv1D))]
    if not names:
        raise ValueError(
            f"cannot place the MLP of {type(model).__name__}'s blocks; pass parameter names or globs, "
            f"e.g. layers=['{blocks_name}.*.<mlp>.<proj>.weight']"
        )
    return names


def select_layers(model: PreTrainedModel, patterns: list[str] | None = None) -> list[EditedLayer]:
    """Resolve exact names or globs (default: last 3 MLPs) to edited layers, in model order."""
    blocks_name, _ = find_blocks(model)
    all_names = [n for n, _ in model.named_parameters()]
    wanted = patterns or default_layer_names(model)
    picked = [n for n in all_names if any(fnmatch.fnmatchcase(n, p) for p in wanted)]
    unmatched = [p for p in wanted if not any(fnmatch.fnmatchcase(n, p) for n in all_names)]
    if unmatched or not picked:
        raise ValueError(f"no parameter matches {unmatched or wanted}; names look like {all_names[-3:]}")
    if any(not n.endswith(".weight") for n in picked):
        raise ValueError(f"only .weight matrices can be edited, got {[n for n in picked if not n.endswith('.weight')]}")
    check_on_device(model, picked)
    return [_layer_of(model, n[: -len(".weight")], blocks_name) for n in picked]
