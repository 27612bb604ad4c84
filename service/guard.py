"""The pre-commit edit guard: runs after a delta is computed and before it is written to the log.

Raising EditRejected (422) stops the edit with nothing written and nothing applied. The finiteness check
below can never be forced: a log event that cannot be applied would stop every replica replaying the log.
The canary check (an edit may change at most a configured share of the canary answers) is a policy: `force`
overrides it, and the measured change and the override go into the edit's audit entry either way.
"""
from __future__ import annotations

import torch
from torch import nn

from editor_core import LowRankDelta, NonFiniteDeltaError
from editor_core.scope import Codebook

from .canary import CanarySet, Change
from .errors import EditRejected


def refusal(changed: int, total: int, limit: float, examples: list[Change]) -> str:
    shown = "; ".join(f"{c.prompt!r}: {c.before!r} -> {c.after!r}" for c in examples)
    return (f"edit rejected: it changes the greedy answers of {changed} of {total} canary prompts "
            f"({changed / total:.1%}, limit {limit:.1%}), e.g. {shown}. Nothing was written; "
            f"send \"force\": true to apply it anyway")


def check_edit(model: nn.Module, delta: LowRankDelta, force: bool, canaries: CanarySet | None,
               max_changed: float) -> dict:
    """The guard's measurement for the audit entry; call under the runtime's read lock (it reads the live weights)."""
    try:
        candidate = delta.updated(model)  # apply's own arithmetic: "passes here" means "applies on every replica"
    except NonFiniteDeltaError as e:
        raise EditRejected("edit rejected: it would make the weights non-finite") from e
    if canaries is None:
        return {}
    changed, examples = canaries.check(candidate)
    over = changed / len(canaries) > max_changed
    if over and not force:
        raise EditRejected(refusal(changed, len(canaries), max_changed, examples))
    return {"canaries": len(canaries), "changed": changed, "max_changed": max_changed, "overridden": over}


def check_scoped_edit(model: nn.Module, delta: LowRankDelta, force: bool, canary_keys: torch.Tensor | None,
                      canary_of: list[int], canary_prompts: list[str] | None, radius: float,
                      max_captured: float) -> dict:
    """A scoped edit changes nothing outside its radius: the canaries it can touch are those with a candidate key
    (`canary_keys`, row j of canary `canary_of[j]`) inside it, known without a forward. It is refused when it
    would capture more than `max_captured` of them."""
    try:
        delta.check(model)  # finite even if it were added to the weights: its factors and scale are sane
    except NonFiniteDeltaError as e:
        raise EditRejected("edit rejected: it has non-finite values") from e
    if canary_keys is None or canary_prompts is None:
        return {}
    # The scope's own rule: a canary is inside when it would select this edit were it the only one stored.
    selected = Codebook.empty(canary_keys.shape[1]).added("new", delta).nearest(canary_keys, radius)
    inside = sorted({canary_of[j] for j, row in enumerate(selected) if row is not None})
    total = len(canary_prompts)
    over = len(inside) / total > max_captured
    if over and not force:
        shown = "; ".join(repr(canary_prompts[i]) for i in inside[:3])
        raise EditRejected(f"edit rejected: its scope (cosine >= {radius}) covers {len(inside)} of "
                           f"{total} canary prompts ({len(inside) / total:.1%}, limit "
                           f"{max_captured:.1%}), e.g. {shown}. Nothing was written; send \"force\": true to apply "
                           f"it anyway")
    return {"canaries": total, "captured": len(inside), "max_captured": max_captured, "overridden": over}
