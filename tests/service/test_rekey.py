"""`mend rekey-log` (rekey.py): a scoped log carried over to a refitted scope serves the same edits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from service_support import EDIT, EDIT2, EDIT3, serving

from editor_core import LowRankDelta
from editor_core.scope import Scope
from service.editlog import EditLog, Event
from service.embedded_redis import EmbeddedRedis
from service.rekey import rekey_log


def scores(client, items) -> list[dict]:
    r = client.post("/score", json={"items": items})
    assert r.status_code == 200, r.text
    return r.json()["scores"]


def refit(old_dir: Path, tmp_path: Path) -> Path:
    """A copy of the scope in `old_dir` keying in another space, as a refit would."""
    new_dir = shutil.copytree(old_dir, tmp_path / "refitted")
    scope = Scope.load(new_dir, [])
    torch.manual_seed(0)
    d = scope.center.numel()
    scope.proj = torch.eye(d) + 0.1 * torch.randn(d, d) / d ** 0.5
    scope.save(new_dir)
    return new_dir


def test_a_log_rekeyed_for_a_new_scope_serves_the_same_edits(settings, tmp_path: Path):
    old_dir = settings.editor
    new_dir = refit(old_dir, tmp_path)
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



def test_rekeying_gives_an_edit_logged_without_its_prompts_the_prompts_it_was_keyed_by(settings, tmp_path: Path):
    """Edits logged before meta["prompts"] existed are selected by their keys alone; re-keyed, they carry their
    request's prompts, so the word check reads their rare words as it reads a new edit's."""
    new_dir = refit(settings.editor, tmp_path)
    with serving(settings) as client:
        for e in (EDIT, EDIT2):
            assert client.post("/edit", json=e).status_code == 201
    redis = EmbeddedRedis(settings.data_dir / "redis").start()
    try:  # the first edit as it was logged before: its delta without meta["prompts"]
        old = EditLog(redis.url, "")
        (key,) = [k.decode() for k in old.client.scan_iter(match="mend:log:*", _type="STREAM")]
        old = EditLog(redis.url, key.removeprefix("mend:log:"))
        events = old.read_after("0")
        first = events[0].load_delta()
        assert json.loads(first.meta["prompts"]) == [EDIT["prompt"]]
        bare = LowRankDelta(first.factors, {k: v for k, v in first.meta.items() if k != "prompts"}, first.key)
        old.client.delete(old.key)
        last = "0"
        for i, ev in enumerate(events):
            delta = bare.to_bytes() if i == 0 else ev.delta
            last = old.append(Event(ev.type, ev.model_fp, ev.editor_fp, ev.log_fp, ev.body, delta), after=last)
    finally:
        redis.stop()
    _, new_key, n = rekey_log(settings.model_copy(update={"editor": new_dir}), settings.editor)
    assert n == 2
    redis = EmbeddedRedis(settings.data_dir / "redis").start()
    try:
        new = EditLog(redis.url, new_key.removeprefix("mend:log:"))
        metas = [ev.load_delta().meta for ev in new.read_after("0")]
    finally:
        redis.stop()
    assert [json.loads(m["prompts"]) for m in metas] == [[EDIT["prompt"]], [EDIT2["prompt"]]]
