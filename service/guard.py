"""The pre-commit edit guard: runs after a delta is computed and before it is written to the log.

Raising EditRejected (422) stops the edit with nothing written and nothing applied. The finiteness check
below can never be forced: a log event that cannot be applied would stop every replica replaying the log.
Policy checks (e.g. refusing edits that damage unrelated facts) belong here too and are skipped when the
request sets `force`, which the audit entry records.
"""
from __future__ import annotations

from torch import nn

from editor_core import EditRequest, LowRankDelta, NonFiniteDeltaError

from .errors import EditRejected


def check_edit(model: nn.Module, requests: list[EditRequest], delta: LowRankDelta, force: bool) -> None:
    """Call under the runtime's read lock: it reads the live weights."""
    try:
        delta.check(model)  # the same arithmetic apply does: "passes here" means "applies on every replica"
    except NonFiniteDeltaError as e:
        raise EditRejected("edit rejected: it would make the weights non-finite") from e
