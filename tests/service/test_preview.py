"""POST /edit with "dry_run": true (issue 14 item 2): what the edit would do, with nothing written or applied.

Both methods (the `either` fixture, scoped first): the preview is computed through each method's own candidate
state (scoped: a codebook of its own; in place: a module tree of its own), so each is checked against what its
committed edit then reports and serves."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from service_support import EDIT, EDIT2, edited_weights, fit_scope, save_editor, serving, weights_hash

from service.schemas import MAX_PROBES

REPLY = 24  # routes/edits.py REPLY_TOKENS: the preview's replies are compared with /generate at this length
REPHRASE = {"prompt": "It rained all day. " + EDIT["prompt"], "target": EDIT["target"]}  # selected by its last sentence
UNRELATED = {"prompt": "Dogs like to", "target": " bark"}


def gen(client, prompt: str, n: int = REPLY) -> str:
    r = client.post("/generate", json={"prompt": prompt, "max_new_tokens": n})
    assert r.status_code == 200, r.text
    return r.json()["text"]


def xlen(client) -> int:
    rt = client.app.state.runtime
    return rt.log.client.xlen(rt.log.key)


def score(client, items: list[dict]) -> list[dict]:
    r = client.post("/score", json={"items": items})
    assert r.status_code == 200, r.text
    return r.json()["scores"]


def dry_run(client, body: dict, **kw) -> dict:
    r = client.post("/edit", json={**body, "dry_run": True}, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_dry_run_reports_what_the_committed_edit_then_reports_and_says(either):
    with serving(either) as client:
        assert client.post("/edit", json=EDIT2).status_code == 201  # a state with an edit in it already
        before = gen(client, EDIT["prompt"])
        preview = dry_run(client, EDIT)
        assert preview["dry_run"] is True and preview["version"] == 1 and preview["probes"] == []
        assert preview["guard"]["would_refuse"] is False and preview["guard"]["reason"] is None
        (reply,) = preview["replies"]
        assert reply["prompt"] == EDIT["prompt"] and reply["before"] == before

        committed = client.post("/edit", json=EDIT)
        assert committed.status_code == 201, committed.text
        body = committed.json()
        assert preview["scores"] == body["scores"]  # pre and post, to the bit
        assert (preview["rank"], preview["bytes"]) == (body["rank"], body["bytes"])
        after = gen(client, EDIT["prompt"])
        assert reply["after"] == after and after != before


def test_a_dry_run_writes_nothing_and_leaves_the_idempotency_key_unused(either):
    with serving(either) as client:
        rt = client.app.state.runtime
        assert client.post("/edit", json=EDIT2).status_code == 201
        state = (xlen(client), rt.version, weights_hash(client), client.get("/edits").json())
        weights, view = edited_weights(client), rt.published.view
        key = {"Idempotency-Key": "preview-then-commit"}
        for body in (EDIT, {**EDIT, "probes": [REPHRASE]}, {"edits": [EDIT, EDIT2], "force": True}):
            dry_run(client, body, headers=key)
        assert (xlen(client), rt.version, weights_hash(client), client.get("/edits").json()) == state
        assert all(torch.equal(weights[n], w) for n, w in edited_weights(client).items())
        assert rt.published.view is view and rt.method.view() is view  # the scoped codebook (None in place)
        assert "mend_edits_total 1.0" in client.get("/metrics").text
        # The key was not used up: an edit sent with it now is a new edit, and it is another request than the previews
        r = client.post("/edit", json={**EDIT, "note": "committed"}, headers=key)
        assert r.status_code == 201 and r.json()["version"] == 2 and xlen(client) == 2, r.text


def test_probes_get_pre_and_post_as_score_reports_them_before_and_after_the_edit(either):
    with serving(either) as client:
        probes = [REPHRASE, UNRELATED]
        live = score(client, probes)
        preview = dry_run(client, {**EDIT, "probes": probes})
        assert [(p["prompt"], p["target"]) for p in preview["probes"]] == [(p["prompt"], p["target"]) for p in probes]
        assert [(p["pre_logprob"], p["pre_exact"]) for p in preview["probes"]] == [
            (s["logprob"], s["exact"]) for s in live]
        assert client.post("/edit", json=EDIT).status_code == 201
        edited = score(client, probes)
        assert [(p["post_logprob"], p["post_exact"]) for p in preview["probes"]] == [
            (s["logprob"], s["exact"]) for s in edited]
        rephrase, unrelated = preview["probes"]
        assert rephrase["post_logprob"] > rephrase["pre_logprob"] + 0.5  # the edit reaches its rephrase
        if either.method == "scoped":  # outside the edit's scope nothing moves, to the bit
            assert unrelated["post_logprob"] == unrelated["pre_logprob"]


@pytest.fixture()
def refusing(either, tmp_path: Path):
    """A guard that refuses EDIT under either method: in place, the tiny editor's step changes every canary answer;
    scoped, EDIT's prompt is one of 3 canaries, inside its own scope."""
    canaries = tmp_path / "canaries.json"
    canaries.write_text(json.dumps([EDIT["prompt"], "Dogs like to", "The sun rises in the"]))
    return either.model_copy(update={"canaries": canaries, "guard_canaries": 3, "guard_max_changed": 0.1,
                                     "guard_max_captured": 0.2})


def test_a_dry_run_the_guard_would_refuse_answers_200_with_the_reason(refusing):
    with serving(refusing) as client:
        for force in (False, True):  # force is irrelevant to a preview: it reports the verdict
            guard = dry_run(client, {**EDIT, "force": force})["guard"]
            assert guard["would_refuse"] is True and guard["reason"].startswith("edit rejected:"), guard
            assert guard["canaries"] == 3
            assert (guard["changed"] or guard["captured"]) > 0  # in place: changed; scoped: captured
        r = client.post("/edit", json=EDIT)
        assert r.status_code == 422 and r.json()["detail"] == guard["reason"], r.text
        assert xlen(client) == 0 and client.app.state.runtime.version == 0


def test_a_dry_run_of_an_edit_that_can_never_apply_is_refused(either, tiny_model_dir: Path, tmp_path: Path):
    """Non-finite: no policy but a broken delta, and post scores on non-finite weights would mean nothing."""
    broken = fit_scope(tiny_model_dir, save_editor(tiny_model_dir, tmp_path / "inf-step", init_alpha=float("inf")))
    with serving(either.model_copy(update={"editor": broken})) as client:
        r = client.post("/edit", json={**EDIT, "dry_run": True})
        assert r.status_code == 422 and r.json()["detail"].startswith("edit rejected:") and "non-finite" in r.text
        assert xlen(client) == 0


def probe(prompt: str = "Dogs like to", target: str = " bark") -> dict:
    return {"prompt": prompt, "target": target}


@pytest.mark.parametrize("body,detail", [
    ({**EDIT, "probes": [probe()]}, "probes are scored by a dry run only"),
    ({**EDIT, "dry_run": True, "probes": [probe()] * (MAX_PROBES + 1)}, f"at most {MAX_PROBES} items"),
    ({**EDIT, "dry_run": True, "probes": [probe("Dogs \ud800 like to")]}, "probes.0.prompt: must be valid Unicode"),
    ({**EDIT, "dry_run": True, "probes": [probe(target=" ")]}, "must not be empty or whitespace"),
    ({**EDIT, "dry_run": True, "probes": [{"prompt": "Dogs like to"}]}, "Field required"),
    ({**EDIT, "dry_run": True, "probes": [probe("x" * 32_001)]}, "at most 32000 characters"),
    ({**EDIT, "dry_run": True, "probes": [probe("x" * 30_000)] * 5}, "together are over 128000 characters"),
    ({**EDIT, "dry_run": True, "probes": [probe("word " * 1500)]}, "prompt is longer than the limit of 1024 tokens"),
    ({**EDIT, "dry_run": True, "probes": [probe("word " * 200)]}, "longer than the editor's limit"),
])
def test_bad_probes_are_refused_and_change_nothing(client, body, detail):
    # json.dumps escapes a lone surrogate, as a client's JSON may; httpx would refuse to encode it
    r = client.post("/edit", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422 and detail in r.text, r.text
    assert xlen(client) == 0 and client.app.state.runtime.version == 0


def test_an_empty_probe_list_is_a_dry_run_without_probes(client):
    assert dry_run(client, {**EDIT, "probes": []})["probes"] == []


def test_a_dry_run_does_not_change_concurrent_generations(either):
    with serving(either) as client:
        prompts = [EDIT["prompt"], UNRELATED["prompt"]]
        expected = {p: gen(client, p) for p in prompts}
        seen: list[tuple[str, str]] = []
        done = threading.Event()

        def generate(prompt: str) -> None:
            while not done.is_set():
                seen.append((prompt, gen(client, prompt)))

        threads = [threading.Thread(target=generate, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        try:
            previews = [dry_run(client, {**EDIT, "probes": [REPHRASE]}) for _ in range(3)]
        finally:
            done.set()
            for t in threads:
                t.join(60)
        # The previews' candidate said something else meanwhile, and no generation said it.
        assert all(p["replies"][0]["after"] != expected[EDIT["prompt"]] for p in previews) and len(seen) > 3
        assert [text for p, text in seen if text != expected[p]] == []
        assert {p: gen(client, p) for p in prompts} == expected
