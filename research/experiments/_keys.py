"""Key helpers the experiments share and the product does not need."""
import torch

from editor_core.scope import Scope
from editor_core.scope.keys import best_candidates


def own_keys(scope: Scope, model, tok, prompts: list[str], own: torch.Tensor) -> torch.Tensor:
    """(B, d): per prompt, its candidate key most similar to own[b], the key of the edit it is asked against: the
    key `Scope.request_keys` gives it when that edit is the only one stored."""
    keys, owner = scope.candidate_keys(model, tok, prompts)
    return keys[best_candidates((keys * own[torch.tensor(owner)]).sum(1), owner, len(prompts))]


def keys_for(scope: Scope, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, d) unit keys of token ids, centred."""
    return scope.unit(scope._pooled(model, input_ids, attention_mask))
