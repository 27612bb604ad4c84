"""The pre-commit edit guard: runs after a delta is computed and before it is written to the log.

Raising EditRejected (422) stops the edit with nothing written and nothing applied. The finiteness check
below can never be forced: a log event that cannot be applied would stop every replica replaying the log, and it
raises even in a dry run. The canary check (an edit may change at most a configured share of the canary answers)
is a policy: it returns a Verdict with the reason it would refuse, so that a dry run can report it; /edit
enforces it, `force` overrides it, and the measured change and the override go into the edit's audit entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editor_core import CanarySet, Change, Codebook, LowRankDelta, NonFiniteDeltaError

from .errors import EditRejected


@dataclass(frozen=True)
class Verdict:
    """The guard's measurement of one candidate edit, and why its policy would refuse it (None: it passes)."""

    measurement: dict  # empty when the canary check is off
    reason: str | None = None

    def enforce(self, force: bool) -> dict:
        """The measurement for the audit entry; raises EditRejected when refused and not forced."""
        if self.reason is not None and not force:
            raise EditRejected(self.reason)
        return {**self.measurement, "overridden": self.reason is not None} if self.measurement else {}


def refusal(changed: int, total: int, limit: float, examples: list[Change]) -> str:
    shown = "; ".join(f"{c.prompt!r}: {c.before!r} -> {c.after!r}" for c in examples)
    return (f"edit rejected: it changes the greedy answers of {changed} of {total} canary prompts "
            f"({changed / total:.1%}, limit {limit:.1%}), e.g. {shown}. Nothing was written; "
            f"send \"force\": true to apply it anyway")


def check_edit(model: nn.Module, delta: LowRankDelta, canaries: CanarySet | None, max_changed: float) -> Verdict:
    """The verdict on adding `delta` to the live weights; call under the runtime's read lock."""
    try:
        candidate = delta.updated(model)  # apply's own arithmetic: "passes here" means "applies on every replica"
    except NonFiniteDeltaError as e:
        raise EditRejected("edit rejected: it would make the weights non-finite") from e
    if canaries is None:
        return Verdict({})
    changed, examples = canaries.check(candidate)
    over = changed / len(canaries) > max_changed
    return Verdict({"canaries": len(canaries), "changed": changed, "max_changed": max_changed},
                   refusal(changed, len(canaries), max_changed, examples) if over else None)


def check_scoped_edit(model: nn.Module, delta: LowRankDelta, canary_keys: torch.Tensor | None,
                      canary_of: list[int], canary_prompts: list[str] | None, radius: float,
                      max_captured: float, empty: Codebook) -> Verdict:
    """A scoped edit changes nothing outside its radius: the canaries it can touch are those with a candidate key
    (`canary_keys`, row j of canary `canary_of[j]`) that would select it in `empty` (a codebook with no edit and
    the scope's checks: `Codebook.cleared`), known without a forward. It is refused when it would capture more than
    `max_captured` of them."""
    try:
        delta.check(model)  # finite even if it were added to the weights: its factors and scale are sane
    except NonFiniteDeltaError as e:
        raise EditRejected("edit rejected: it has non-finite values") from e
    if canary_keys is None or canary_prompts is None:
        return Verdict({})
    # The scope's own rule: a canary is inside when it would select this edit were it the only one stored.
    selected = empty.added("new", delta).nearest(canary_keys, radius, [canary_prompts[i] for i in canary_of])
    inside = sorted({canary_of[j] for j, row in enumerate(selected) if row is not None})
    total = len(canary_prompts)
    measurement = {"canaries": total, "captured": len(inside), "max_captured": max_captured}
    if len(inside) / total <= max_captured:
        return Verdict(measurement)
    shown = "; ".join(repr(canary_prompts[i]) for i in inside[:3])
    return Verdict(measurement, f"edit rejected: its scope (cosine >= {radius}) covers {len(inside)} of "
                                f"{total} canary prompts ({len(inside) / total:.1%}, limit "
                                f"{max_captured:.1%}), e.g. {shown}. Nothing was written; send \"force\": true to "
                                f"apply it anyway")
