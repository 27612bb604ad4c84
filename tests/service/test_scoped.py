"""MEND_METHOD=scoped (editor_core/scope.py through service/methods.py): edits act inside their scope only, weights
never change, rollback and restart are exact, the scoped log is its own log, and the guard counts captured
canaries. The fixtures' tiny editor has a fitted scope (service_support.fit_scope) and scoped is the default method;
its radius is 0.999: a prompt selects an edit only when it is (nearly) the edit's own prompt."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_support import EDIT, EDIT2, client_serving, edited_weights, save_editor, serving

from service.client import Rejected

OTHER = {"prompt": "Once upon a time there was", "target": "a dragon"}


@pytest.fixture()
def scoped(settings):
    assert settings.method == "scoped"  # the default
    return settings


def scores(client, *items) -> list[dict]:
    r = client.post("/score", json={"items": list(items)})
    assert r.status_code == 200, r.text
    return r.json()["scores"]


def test_a_scoped_edit_acts_on_its_prompt_only_and_never_touches_the_weights(scoped):
    with serving(scoped) as client:
        base_weights = edited_weights(client)
        before = scores(client, EDIT, OTHER)
        r = client.post("/edit", json=EDIT)
        assert r.status_code == 201, r.text
        after = scores(client, EDIT, OTHER)
        assert after[0]["exact"] and not before[0]["exact"]
        assert after[1] == before[1]  # outside the scope: bit-identical scores
        assert client.post("/generate",
                           json={"prompt": EDIT["prompt"], "max_new_tokens": 2}).json()["text"].startswith(" Rome")
        assert all((w == base_weights[n]).all() for n, w in edited_weights(client).items())


def test_rollback_and_restart_of_scoped_edits_are_exact(scoped):
    with client_serving(scoped) as (_, mend):
        before = mend.score([EDIT, EDIT2]).scores
        ids = [mend.edit(**e).edit_id for e in (EDIT, EDIT2)]
        both = mend.score([EDIT, EDIT2]).scores
        mend.rollback(ids[0])
        one = mend.score([EDIT, EDIT2]).scores
        assert one[0] == before[0] and one[1] == both[1]
    with client_serving(scoped) as (_, mend):
        assert mend.ready().active_edits == 1
        assert mend.score([EDIT, EDIT2]).scores == one


def test_the_scoped_log_is_not_the_in_place_log(scoped, inplace):
    with serving(scoped) as client:
        client.post("/edit", json=EDIT)
        scoped_key = client.app.state.runtime.log.key
    with serving(inplace) as client:  # same Redis folder, in-place method: another log, nothing replayed
        rt = client.app.state.runtime
        assert rt.log.key != scoped_key and rt.version == 0 and scoped_key in rt.log.other_logs()


def test_the_guard_refuses_a_scope_that_covers_canaries_unless_forced(scoped, tmp_path: Path):
    canaries = tmp_path / "canaries.json"
    canaries.write_text(json.dumps([EDIT["prompt"], "Dogs like to", "The sun rises in the"]))
    cfg = scoped.model_copy(update={"canaries": canaries, "guard_canaries": 3, "guard_max_captured": 0.2})
    with client_serving(cfg) as (_, mend):
        with pytest.raises(Rejected, match="covers 1 of 3 canary prompts") as refused:
            mend.edit(**EDIT)
        assert refused.value.status == 422 and mend.ready().version == 0
        forced = mend.edit(**EDIT, force=True)
        assert mend.get_edit(forced.edit_id).guard == {"canaries": 3, "captured": 1, "max_captured": 0.2,
                                                      "overridden": True}
        assert mend.edit(**EDIT2).version == 2  # covers none of them


def test_a_relation_check_keeps_prompts_inside_the_radius_from_an_edit_and_the_guard_counts_as_it(
        scoped, tmp_path: Path):
    """A scope with a relation check (`RelationCheck`): a prompt whose key is within the radius but whose relation
    key is not the edit's gets the unedited reply, and the guard counts only the canaries the edit can select."""
    import shutil

    import torch
    from transformers import LlamaForCausalLM

    from editor_core.model import load_tokenizer, prepare_model
    from editor_core.scope import Scope

    editor = tmp_path / "editor"
    shutil.copytree(scoped.editor, editor)
    scope = Scope.load(editor, [])
    scope.cfg.radius = -1.0  # every prompt is within the radius of every edit
    torch.manual_seed(1)
    scope.with_relation(torch.randn(4, scope.center.numel()), 0.5).save(editor)
    others = ["Dogs like to", "The sun rises in the", "My favourite food is", "Once upon a time there was"]
    model = prepare_model(LlamaForCausalLM.from_pretrained(scoped.model))
    keys = scope.prompt_keys(model, load_tokenizer(scoped.model), [EDIT["prompt"], *others])
    rel = scope.relation_check().keys(keys)
    related = [bool(c >= 0.5) for c in (rel[1:] @ rel[0]).tolist()]
    assert any(related) and not all(related)  # the seed gives both kinds

    canaries = tmp_path / "canaries.json"
    canaries.write_text(json.dumps(others))
    cfg = scoped.model_copy(update={"editor": editor, "canaries": canaries, "guard_canaries": len(others),
                                   "guard_max_captured": 1.0})
    with serving(cfg) as client:
        before = [client.post("/generate", json={"prompt": p, "max_new_tokens": 4}).json()["text"] for p in others]
        r = client.post("/edit", json=EDIT)
        assert r.status_code == 201, r.text
        assert client.get(f"/edits/{r.json()['edit_id']}").json()["guard"]["captured"] == sum(related)
        after = [client.post("/generate", json={"prompt": p, "max_new_tokens": 4}).json()["text"] for p in others]
        assert [a == b for a, b in zip(after, before)] == [not x for x in related]


def test_a_word_check_lets_a_prompt_naming_the_edits_rare_words_select_it_and_the_guard_counts_as_it(
        scoped, tmp_path: Path):
    """A scope with a word check (`WordCheck`) and a radius no other wording reaches: a prompt that names every rare
    word of the edit's question ("france") gets the edit, one that does not keeps its reply, and the guard counts
    the canaries the edit can select by words too."""
    import shutil

    from editor_core.scope import Scope, fit_words

    editor = tmp_path / "editor"
    shutil.copytree(scoped.editor, editor)
    scope = Scope.load(editor, [])
    scope.cfg.radius = 0.9999  # by its key alone, only the edit's own wording selects it
    scope.with_words(fit_words(["The capital of Spain is", "The capital of Peru is"], 0.5), -1.0).save(editor)
    others = ["Tell me about France", "Tell me about Spain", "The capital of it is", "France"]
    named = [True, False, False, True]

    canaries = tmp_path / "canaries.json"
    canaries.write_text(json.dumps(others))
    cfg = scoped.model_copy(update={"editor": editor, "canaries": canaries, "guard_canaries": len(others),
                                   "guard_max_captured": 1.0})
    with serving(cfg) as client:
        def replies() -> list[str]:
            return [client.post("/generate", json={"prompt": p, "max_new_tokens": 4}).json()["text"] for p in others]

        def scored() -> list[float]:
            r = client.post("/score", json={"items": [{"prompt": p, "target": EDIT["target"]} for p in others]})
            return [x["logprob"] for x in r.json()["scores"]]

        before, scores_before = replies(), scored()
        r = client.post("/edit", json=EDIT)
        assert r.status_code == 201, r.text
        assert client.get(f"/edits/{r.json()['edit_id']}").json()["guard"]["captured"] == sum(named)
        assert [a != b for a, b in zip(scored(), scores_before)] == named
        after = replies()
        assert all(a == b for a, b, n in zip(after, before, named) if not n)
        client.post("/rollback", json={"edit_id": r.json()["edit_id"]})
        assert replies() == before


def test_scoped_needs_a_fitted_scope(settings, tiny_model_dir: Path, tmp_path: Path):
    from service.runtime import Runtime
    unscoped = save_editor(tiny_model_dir, tmp_path / "no-scope")
    with pytest.raises(FileNotFoundError, match="mend fit-scope"):
        Runtime.start(settings.model_copy(update={"editor": unscoped}))
