"""Every bad input of issue 4 gets a clear 4xx with a fixed message and changes nothing (no event, same weights)."""
from __future__ import annotations

import pytest
from service_support import EDIT, make_settings, serving, weights_hash

from service.schemas import MAX_TEXT_CHARS


@pytest.fixture()
def strict(settings):
    """An app with small limits, so over-limit inputs are cheap to build."""
    with serving(settings.model_copy(update={"max_prompt_tokens": 16, "max_new_tokens": 8})) as client:
        yield client


def assert_unchanged(client, h0: str) -> None:
    rt = client.app.state.runtime
    assert rt.version == 0 and rt.log.client.xlen(rt.log.key) == 0 and weights_hash(client) == h0


BAD_EDITS = [
    ({"prompt": "", "target": "Rome"}, "prompt: must not be empty or whitespace"),
    ({"prompt": " \n\t", "target": "Rome"}, "prompt: must not be empty or whitespace"),
    ({"prompt": "The capital of France is", "target": ""}, "target: must not be empty or whitespace"),
    ({"prompt": "The capital of France is", "target": "   "}, "target: must not be empty or whitespace"),
    ({"edits": [{"prompt": "ok", "target": " "}]}, "edits.0.target: must not be empty or whitespace"),
    ({"edits": []}, "edits: List should have at least 1 item after validation, not 0"),
    ({"prompt": "The capital of France is"}, "prompt and target are both required"),
    ({**EDIT, "edits": [EDIT]}, "send either prompt and target, or edits, not both"),
    ({}, "send either prompt and target, or edits, not both"),
    ({"prompt": "word " * 40, "target": "Rome"}, "prompt is longer than the limit of 16 tokens"),
]


@pytest.mark.parametrize("body,detail", BAD_EDITS)
def test_bad_edit_is_refused_and_changes_nothing(strict, body, detail):
    h0 = weights_hash(strict)
    r = strict.post("/edit", json=body)
    assert r.status_code == 422 and r.json()["detail"] == detail
    assert_unchanged(strict, h0)


def test_edit_longer_than_the_editor_window_is_refused(client):
    # The editor sees 64 tokens of prompt + target; longer would silently drop the prompt's start.
    h0 = weights_hash(client)
    r = client.post("/edit", json={"prompt": "word " * 20, "target": "long " * 50})
    assert r.status_code == 422
    assert r.json()["detail"] == "prompt and target together are longer than the editor's limit of 64 tokens"
    assert_unchanged(client, h0)


@pytest.mark.parametrize("path", ["/edit", "/generate", "/rollback"])
def test_malformed_json_is_a_400(client, path):
    h0 = weights_hash(client)
    r = client.post(path, content=b'{"prompt": "x", "target": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"] == "malformed JSON body"
    assert_unchanged(client, h0)


BAD_GENERATIONS = [
    ({"prompt": "hi", "max_new_tokens": 9}, "max_new_tokens is over the limit of 8"),
    ({"prompt": "word " * 40}, "prompt is longer than the limit of 16 tokens"),
    ({"messages": [{"role": "user", "content": "word " * 40}]}, "prompt is longer than the limit of 16 tokens"),
    ({"prompt": "  "}, "prompt: must not be empty or whitespace"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "send either prompt or messages"),
    ({}, "send either prompt or messages"),
    ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens: Input should be greater than or equal to 1"),
    ({"prompt": "hi", "top_p": 0}, "top_p: Input should be greater than 0"),
    ({"prompt": "hi", "temperature": -1}, "temperature: Input should be greater than or equal to 0"),
]


@pytest.mark.parametrize("body,detail", BAD_GENERATIONS)
def test_bad_generation_is_refused(strict, body, detail):
    r = strict.post("/generate", json=body)
    assert r.status_code == 422 and r.json()["detail"] == detail


def test_unknown_edit_is_404(client):
    h0 = weights_hash(client)
    assert client.get("/edits/nope").json() == {"detail": "unknown edit_id"}
    r = client.post("/rollback", json={"edit_id": "nope"})
    assert r.status_code == 404 and r.json() == {"detail": "unknown edit_id"}
    assert_unchanged(client, h0)


def test_rolling_back_twice_is_409(client):
    eid = client.post("/edit", json=EDIT).json()["edit_id"]
    assert client.post("/rollback", json={"edit_id": eid}).status_code == 200
    h, version = weights_hash(client), client.app.state.runtime.version
    r = client.post("/rollback", json={"edit_id": eid})
    assert r.status_code == 409 and r.json() == {"detail": "edit is already rolled back"}
    assert client.app.state.runtime.version == version and weights_hash(client) == h


@pytest.mark.parametrize("body,status,detail", [
    ({"to_version": 0}, 409, "no active edit after that version"),
    ({"to_version": 5}, 422, "to_version 5 is after the current version 0"),
    ({"to_version": -1}, 422, "to_version: Input should be greater than or equal to 0"),
    ({}, 422, "send either edit_id or to_version"),
    ({"edit_id": "x", "to_version": 0}, 422, "send either edit_id or to_version"),
])
def test_bad_rollback_is_refused(client, body, status, detail):
    h0 = weights_hash(client)
    r = client.post("/rollback", json=body)
    assert r.status_code == status and r.json()["detail"] == detail
    assert_unchanged(client, h0)


def test_bad_paging_is_refused(client):
    assert client.get("/edits", params={"limit": 0}).status_code == 422
    assert client.get("/edits", params={"status": "deleted"}).status_code == 422


def test_model_without_chat_template_refuses_messages(tiny_model_dir, tiny_editor_dir, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name != "chat_template.jinja":
            (plain / f.name).write_bytes(f.read_bytes())
    with serving(make_settings(plain, tiny_editor_dir, tmp_path / "data")) as client:
        if client.app.state.runtime.tokenizer.chat_template:
            pytest.fail("the copied tokenizer still has a chat template; the test must remove it")
        r = client.post("/generate", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 422
    assert r.json()["detail"] == "this model has no chat template: send 'prompt' instead of 'messages'"


# Issue 13: input that once reached the tokenizer, Redis or torch and came back as a plain-text 500, or that
# made it to the tokenizer whole. Raw bodies, because a lone surrogate exists only as a JSON escape.
SURROGATE = "must be valid Unicode (no lone surrogates)"
MORE_THAN_ONE_PROMPT = "x" * (MAX_TEXT_CHARS + 1)
TOO_MUCH_IN_ALL = "the request's texts together are over 128000 characters"
BAD_INPUTS = [
    ("/edit", rb'{"prompt": "\ud800", "target": "Rome"}', f"prompt: {SURROGATE}"),
    ("/edit", rb'{"prompt": "The capital of France is", "target": "Ro\udfffme"}', f"target: {SURROGATE}"),
    ("/edit", rb'{"edits": [{"prompt": "\ud800", "target": "Rome"}]}', f"edits.0.prompt: {SURROGATE}"),
    ("/edit", rb'{"prompt": "a", "target": "b", "author": "\ud800"}', f"author: {SURROGATE}"),
    ("/edit", rb'{"prompt": "a", "target": "b", "note": "\ud800"}', f"note: {SURROGATE}"),
    ("/generate", rb'{"prompt": "\ud800"}', f"prompt: {SURROGATE}"),
    ("/generate", rb'{"messages": [{"role": "user", "content": "\ud800"}]}', f"messages.0.content: {SURROGATE}"),
    ("/generate", rb'{"prompt": "hi", "stop": ["\ud800"]}', f"stop.0: {SURROGATE}"),
    ("/score", rb'{"items": [{"prompt": "\ud800", "target": "x"}]}', f"items.0.prompt: {SURROGATE}"),
    ("/rollback", rb'{"edit_id": "\ud800"}', f"edit_id: {SURROGATE}"),
    ("/generate", b'{"prompt": "hi", "seed": %d}' % 2**64,
     "seed: Input should be less than or equal to 9223372036854775807"),
    ("/generate", b'{"prompt": "hi", "seed": %d}' % 2**63,
     "seed: Input should be less than or equal to 9223372036854775807"),
    ("/generate", b'{"messages": [{"role": "wizard", "content": "hi"}]}',
     "messages.0.role: Input should be 'system', 'user' or 'assistant'"),
    ("/generate", {"prompt": MORE_THAN_ONE_PROMPT}, "prompt: String should have at most 32000 characters"),
    ("/generate", {"messages": [{"role": "user", "content": MORE_THAN_ONE_PROMPT}]},
     "messages.0.content: String should have at most 32000 characters"),
    ("/generate", {"messages": [{"role": "user", "content": "x" * 30_000}] * 5}, TOO_MUCH_IN_ALL),
    ("/generate", {"messages": [{"role": "user", "content": "hi"}] * 65},
     "messages: List should have at most 64 items after validation, not 65"),
    ("/generate", {"prompt": "hi", "stop": ["x" * 201]}, "stop.0: String should have at most 200 characters"),
    ("/edit", {"prompt": MORE_THAN_ONE_PROMPT, "target": "Rome"},
     "prompt: String should have at most 32000 characters"),
    ("/edit", {"prompt": "The capital of France is", "target": MORE_THAN_ONE_PROMPT},
     "target: String should have at most 32000 characters"),
    ("/edit", {"edits": [{"prompt": "x" * 30_000, "target": "Rome"}] * 5}, TOO_MUCH_IN_ALL),
    ("/score", {"items": [{"prompt": "x" * 30_000, "target": "Rome"}] * 5}, TOO_MUCH_IN_ALL),
    ("/rollback", {"edit_id": "x" * 65}, "edit_id: String should have at most 64 characters"),
]


@pytest.mark.parametrize("path,body,detail", BAD_INPUTS)
def test_bad_input_is_a_json_4xx_and_changes_nothing(client, path, body, detail):
    h0 = weights_hash(client)
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    assert r.json()["detail"] == detail
    assert_unchanged(client, h0)


def test_the_largest_seed_and_every_chat_role_are_served(client):
    for body in [{"prompt": "hi", "seed": 2**63 - 1, "temperature": 1.0},
                 {"messages": [{"role": r, "content": "hi"} for r in ("system", "user", "assistant")]}]:
        assert client.post("/generate", json={**body, "max_new_tokens": 2}).status_code == 200


def test_an_unexpected_error_is_a_json_500(client):
    # No listed input reaches this handler (the tests above); it is there for bugs, which must still answer
    # in the API's shape rather than as Starlette's plain-text page.
    def broken() -> None:
        raise RuntimeError("a bug")

    client.app.add_api_route("/broken", broken)
    r = client.get("/broken")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    counted = [l for l in client.get("/metrics").text.splitlines() if "/broken" in l and l.startswith("mend_responses")]
    assert counted and 'status="500"' in counted[0] and counted[0].endswith(" 1.0"), counted  # seen by monitoring


@pytest.mark.parametrize("body", [{"temperature": 1e-300, "seed": 1}, {"temperature": 1.0, "top_p": 1e-300, "seed": 1}])
def test_extreme_sampling_settings_are_served(client, body):
    r = client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2, **body})
    assert r.status_code == 200, r.text
