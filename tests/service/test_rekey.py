"""`mend rekey-log` (rekey.py): a scoped log carried over to a refitted scope serves the same edits."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from service_support import EDIT, EDIT2, EDIT3, serving

from editor_core.scope import Scope
from service.rekey import rekey_log


def scores(client, items) -> list[dict]:
    r = client.post("/score", json={"items": items})
    assert r.status_code == 200, r.text
    return r.json()["scores"]


def test_a_log_rekeyed_for_a_new_scope_serves_the_same_edits(settings, tmp_path: Path):
    old_dir = settings.editor
    new_dir = shutil.copytree(old_dir, tmp_path / "refitted")
    scope = Scope.load(new_dir, [])
    torch.manual_seed(0)
    d = scope.center.numel()
    scope.proj = torch.eye(d) + 0.1 * torch.randn(d, d) / d ** 0.5  # a refit: another key space
    scope.save(new_dir)
    items = [{"prompt": e["prompt"], "target": e["target"]} for e in (EDIT, EDIT2, EDIT3)]
    with serving(settings) as client:
        ids = [client.post("/edit", json=e).json()["edit_id"] for e in (EDIT, EDIT2, EDIT3)]
        client.post("/rollback", json={"edit_id": ids[1]})
        before, listing = scores(client, items), client.get("/edits").json()
    refitted = settings.model_copy(update={"editor": new_dir})
    with serving(refitted) as client:  # without re-keying: another log, nothing of the old one applies
        assert client.get("/ready").json()["version"] == 0
        assert scores(client, items) != before
    old, new, n = rekey_log(refitted, old_dir)
    assert n == 4 and old != new
    with serving(refitted) as client:
        assert client.get("/ready").json()["version"] == 4
        assert client.get("/edits").json() == listing  # the audit trail as it was: ids, versions, authors, times
        assert scores(client, items) == before
    with pytest.raises(ValueError, match="already holds events"):
        rekey_log(refitted, old_dir)

