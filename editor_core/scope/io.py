"""A scope on disk: scope.safetensors (centre, whitening, bank, relation projection), scope.json, words.json."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import load_file, save_file

from ..layers import EditedLayer
from .config import ScopeConfig

if TYPE_CHECKING:
    from .scope import Scope

CONFIG_FILE, WEIGHTS_FILE, WORDS_FILE = "scope.json", "scope.safetensors", "words.json"


def save(scope: Scope, path: str | Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"center": scope.center.contiguous()}
    if scope.proj is not None:
        tensors["proj"] = scope.proj.contiguous()
    if scope.bank is not None:
        tensors["bank"] = scope.bank.half().contiguous()
    if scope.relation is not None:
        tensors["relation"] = scope.relation.contiguous()
    save_file(tensors, path / WEIGHTS_FILE, metadata={"format": "mend-scope"})
    (path / CONFIG_FILE).write_text(json.dumps(asdict(scope.cfg), indent=2, sort_keys=True) + "\n")
    if scope.common is not None:
        (path / WORDS_FILE).write_text(json.dumps({"common": sorted(scope.common)}, indent=0) + "\n")
    else:
        (path / WORDS_FILE).unlink(missing_ok=True)


def load(cls: type[Scope], path: str | Path, layers: list[EditedLayer]) -> Scope:
    path = Path(path)
    cfg = ScopeConfig(**json.loads((path / CONFIG_FILE).read_text()))
    tensors = load_file(path / WEIGHTS_FILE)
    proj = tensors["proj"].float() if "proj" in tensors else None
    bank = tensors["bank"].float() if "bank" in tensors else None
    relation = tensors["relation"].float() if "relation" in tensors else None
    words = path / WORDS_FILE
    common = frozenset(json.loads(words.read_text())["common"]) if words.exists() else None
    return cls(cfg, layers, tensors["center"].float(), proj, bank, relation, common)
