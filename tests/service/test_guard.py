"""The edit guard (issue 7): canary check before commit, force override in the audit entry, drift in /metrics.

The canary answers and the drift are the in-place guard's (scoped edits' guard counts captured canaries:
test_scoped.py), so those tests run in place. The destructive edit is real: the tiny untrained editor's step
alpha=10 on the random model rewrites every canary answer (see service_support.GUARD_OFF); a benign edit is the
same editor with a small step.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from service_support import EDIT, fit_scope, save_editor, serving, weights_hash

LIMIT = 0.1


@pytest.fixture()
def guarded(inplace):
    with serving(inplace.model_copy(update={"guard_max_changed": LIMIT})) as client:
        yield client


def xlen(client) -> int:
    rt = client.app.state.runtime
    return rt.log.client.xlen(rt.log.key)


def metric(client, name: str) -> dict[str, float]:
    """{label value or '': sample} of one metric family in the /metrics text."""
    text = client.get("/metrics").text
    rows = re.findall(rf'^{name}(?:{{param="([^"]*)"}})? (\S+)$', text, re.M)
    return {label: float(value) for label, value in rows}


def test_a_destructive_edit_is_refused_and_writes_nothing(guarded):
    h0 = weights_hash(guarded)
    r = guarded.post("/edit", json=EDIT)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert re.match(r"edit rejected: it changes the greedy answers of \d+ of 100 canary prompts", detail)
    assert "limit 10.0%" in detail and "->" in detail and '"force": true' in detail
    assert xlen(guarded) == 0 and guarded.app.state.runtime.version == 0 and weights_hash(guarded) == h0


def test_force_overrides_the_canary_check_and_is_recorded(guarded):
    r = guarded.post("/edit", json={**EDIT, "force": True, "author": "ops"})
    assert r.status_code == 201, r.text
    entry = guarded.get(f"/edits/{r.json()['edit_id']}").json()
    assert entry["force"] is True and entry["guard"]["overridden"] is True
    assert entry["guard"]["canaries"] == 100 and entry["guard"]["changed"] > LIMIT * 100
    assert entry["guard"]["max_changed"] == LIMIT and xlen(guarded) == 1


def test_a_benign_edit_passes(inplace, tiny_model_dir: Path, tmp_path: Path):
    small = save_editor(tiny_model_dir, tmp_path / "small-step", init_alpha=1e-3)
    with serving(inplace.model_copy(update={"editor": small, "guard_max_changed": LIMIT})) as client:
        r = client.post("/edit", json=EDIT)
        assert r.status_code == 201, r.text
        guard = client.get(f"/edits/{r.json()['edit_id']}").json()["guard"]
        assert guard["changed"] <= LIMIT * 100 and guard["overridden"] is False


@pytest.mark.parametrize("method,detail", [("inplace", "edit rejected: it would make the weights non-finite"),
                                           ("scoped", "edit rejected: it has non-finite values")])
def test_non_finite_edits_are_refused_even_when_forced(settings, tiny_model_dir: Path, tmp_path: Path, method, detail):
    broken = fit_scope(tiny_model_dir, save_editor(tiny_model_dir, tmp_path / "inf-step", init_alpha=float("inf")))
    with serving(settings.model_copy(update={"editor": broken, "method": method})) as client:
        h0 = weights_hash(client)
        r = client.post("/edit", json={**EDIT, "force": True})
        assert r.status_code == 422 and r.json()["detail"] == detail, r.text
        assert xlen(client) == 0 and weights_hash(client) == h0


def test_drift_is_zero_at_base_grows_with_an_edit_and_returns_to_zero(inplace):
    with serving(inplace) as client:
        layers = client.app.state.runtime.layer_names
        assert metric(client, "mend_weight_drift") == {n: 0.0 for n in layers}
        assert metric(client, "mend_canary_agreement") == {"": 1.0}
        assert client.post("/edit", json=EDIT).status_code == 201
        drift = metric(client, "mend_weight_drift")
        assert set(drift) == set(layers) and all(v > 0 for v in drift.values())
        assert metric(client, "mend_canary_agreement")[""] < 1.0 and metric(client, "mend_active_edits") == {"": 1.0}
        assert client.post("/rollback", json={"to_version": 0}).status_code == 200
        assert metric(client, "mend_weight_drift") == {n: 0.0 for n in layers}
        assert metric(client, "mend_canary_agreement") == {"": 1.0}


def test_scoped_edits_never_move_the_weights_and_keep_no_copy_of_them(settings):
    """The default (scoped) method adds its deltas per request: the weights are the base's, so drift stays 0 and
    no snapshot of the edited matrices is held (it would double their memory for nothing)."""
    with serving(settings) as client:
        rt = client.app.state.runtime
        assert rt.method.name == "scoped" and not hasattr(rt.method, "base")
        assert client.post("/edit", json=EDIT).status_code == 201
        assert metric(client, "mend_weight_drift") == {n: 0.0 for n in rt.layer_names}
        assert metric(client, "mend_active_edits") == {"": 1.0}


def test_operator_canaries_with_answers_replace_the_default(inplace, tmp_path: Path):
    path = tmp_path / "canaries.json"
    path.write_text(json.dumps([{"prompt": "The capital of France is", "answer": "Paris"}, "Water boils at",
                                {"prompt": "The largest planet is", "answer": ""}]))
    with serving(inplace.model_copy(update={"canaries": path, "guard_canaries": 3})) as client:
        r = client.post("/edit", json=EDIT)
        assert r.status_code == 201, r.text
        assert client.get(f"/edits/{r.json()['edit_id']}").json()["guard"]["canaries"] == 3


@pytest.mark.parametrize("content,message", [
    ("not json", "cannot be read as JSON"),
    (json.dumps(["one prompt"]), "at least 100 canaries"),
    (json.dumps([{"answer": "no prompt"}] * 100), "entry 0: expected a prompt"),
])
def test_a_bad_canary_file_stops_the_startup_with_a_clear_message(settings, tmp_path: Path, content, message):
    path = tmp_path / "canaries.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        with serving(settings.model_copy(update={"canaries": path})):
            pass


def test_guard_off_starts_without_canaries(settings):
    with serving(settings.model_copy(update={"guard_canaries": 0})) as client:
        r = client.post("/edit", json=EDIT)
        assert r.status_code == 201 and client.get(f"/edits/{r.json()['edit_id']}").json()["guard"] == {}
        assert metric(client, "mend_canary_agreement") == {}
