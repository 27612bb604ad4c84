"""What a scoped delta carries beside its factors and keys, as one typed record.

`LowRankDelta.meta` is a str -> str map (it travels in a safetensors header), so each field is stored as JSON
text; this is the one place that reads and writes them. Every field is optional because the log keeps edits
written before the field existed, and they must replay as they were served then.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields

from .forms import PLAIN


@dataclass(frozen=True)
class ScopedMeta:
    scope_scale: tuple[float, ...] | None = None  # each piece's step
    prompts: tuple[str, ...] | None = None  # the question each key row is keyed by (for the word check)
    targets: tuple[str, ...] | None = None  # the answer each key row installs, as the user gave it
    key_ranks: dict[str, list[int]] | None = None  # per layer, each piece's rank along the stacked factors
    forms: tuple[str, ...] | None = None  # the forms each key row has a piece for (None: the plain prompt only)
    radii: tuple[float, ...] | None = None  # each key row's own radius (None: the scope's)
    # Per key row, whether its target was extended to end the answer's word; "all" for logs that extended every one.
    word_end: tuple[bool, ...] | str | None = None

    @classmethod
    def read(cls, meta: dict[str, str]) -> ScopedMeta:
        got = {}
        for f in fields(cls):
            if f.name not in meta:
                continue
            if f.name == "word_end" and meta[f.name] == "1":
                got[f.name] = "all"
                continue
            value = json.loads(meta[f.name])
            got[f.name] = value if isinstance(value, dict) else tuple(
                bool(v) for v in value) if f.name == "word_end" else tuple(value)
        return cls(**got)

    def written(self) -> dict[str, str]:
        """The set fields as meta entries, in field order."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "word_end":
                out[f.name] = "1" if value == "all" else json.dumps([int(v) for v in value])
            else:
                out[f.name] = json.dumps(value if isinstance(value, dict) else list(value))
        return out

    def form_names(self) -> tuple[str, ...]:
        return self.forms or (PLAIN,)

    def row_word_end(self, n: int) -> tuple[bool, ...]:
        rows = (True,) * n if self.word_end == "all" else self.word_end or (False,) * n
        return tuple(rows) if len(rows) == n else (False,) * n

    def row_radii(self, n: int) -> list[float]:
        # Edits logged before banks have the scope's radius alone (-inf: the scope's floor decides).
        return list(self.radii) if self.radii and len(self.radii) == n else [float("-inf")] * n

    def row_targets(self, n: int) -> tuple[str | None, ...]:
        return self.targets if self.targets is not None and len(self.targets) == n else (None,) * n

    def row_prompts(self, n: int) -> tuple[str, ...] | None:
        """None for edits logged before their prompts were: they are selected by their keys alone."""
        return self.prompts if self.prompts is not None and len(self.prompts) == n else None
