"""The OpenAI-compatible routes (routes/openai.py) through OpenAI's own client against a real uvicorn: the edited
model as /generate serves it, streamed or not, with OpenAI's errors."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from pydantic import SecretStr
from service_support import EDIT, http_serving

import editor_core.generation

QUESTION = [{"role": "user", "content": EDIT["prompt"]}]


class Server:
    def __init__(self, app, url: str, key: str = "none") -> None:
        self.app, self.rt, self.model = app, app.state.runtime, app.state.settings.model
        self.openai = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def generate(self, **body) -> dict:
        r = self.http.post("/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def state(self) -> tuple:
        return self.rt.version, self.rt.log.client.xlen(self.rt.log.key), self.http.get("/ready").json()["weights"]


@pytest.fixture()
def server(settings):
    with http_serving(settings) as (app, url):
        yield Server(app, url)


@pytest.fixture()
def either_server(either):
    with http_serving(either) as (app, url):
        yield Server(app, url)


def chat_stream(server: Server, **kw) -> tuple[str, list]:
    chunks = list(server.openai.chat.completions.create(model=server.model, stream=True, **kw))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def completion_stream(server: Server, **kw) -> tuple[str, list]:
    chunks = list(server.openai.completions.create(model=server.model, stream=True, **kw))
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks


def test_models_lists_the_served_model(server):
    assert [m.id for m in server.openai.models.list()] == [server.model]


def test_completions_serve_what_generate_serves(server):
    out = server.openai.completions.create(model=server.model, prompt="Once upon a time", max_tokens=6, temperature=0)
    gen = server.generate(prompt="Once upon a time", max_new_tokens=6)
    assert out.choices[0].text == gen["text"] and out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        gen["prompt_tokens"], 6, gen["prompt_tokens"] + 6)
    assert out.system_fingerprint == "v0" and out.mend_version == 0 and out.model == server.model


def test_chat_completions_serve_what_generate_serves(server):
    kw = {"max_tokens": 8, "temperature": 0.9, "top_p": 0.9, "seed": 7}
    out = server.openai.chat.completions.create(model=server.model, messages=QUESTION, **kw)
    gen = server.generate(messages=QUESTION, max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7)
    assert out.choices[0].message.content == gen["text"] and out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == gen["finish_reason"]
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (gen["prompt_tokens"], gen["completion_tokens"])
    assert out.mend_version == 0 and out.system_fingerprint == "v0"
    # OpenAI's newer name for max_tokens
    newer = server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_completion_tokens=3,
                                                  temperature=0)
    assert newer.usage.completion_tokens == 3


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.3, "top_p": 0.95, "seed": 11}])
def test_a_stream_adds_up_to_the_whole_reply(server, sampling):
    chat = server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=16, **sampling)
    text, chunks = chat_stream(server, messages=QUESTION, max_tokens=16, stream_options={"include_usage": True},
                               **sampling)
    assert text == chat.choices[0].message.content and len(chunks) > 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 2) + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage == chat.usage  # the usage chunk
    assert {c.id for c in chunks} == {chunks[0].id} and {c.system_fingerprint for c in chunks} == {"v0"}

    plain = server.openai.completions.create(model=server.model, prompt="Once upon a time", max_tokens=16, **sampling)
    text, chunks = completion_stream(server, prompt="Once upon a time", max_tokens=16, **sampling)
    assert text == plain.choices[0].text and chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked for


def test_stop_strings_in_a_stream(server):
    kw = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.5, "seed": 3}
    full = server.openai.completions.create(model=server.model, **kw).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    for given in (stop, [stop, "\x00never"]):
        whole = server.openai.completions.create(model=server.model, stop=given, **kw).choices[0]
        text, chunks = completion_stream(server, stop=given, **kw)
        assert text == whole.text == full[: full.index(stop)] and whole.finish_reason == "stop"
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert stop not in "".join(c.choices[0].text for c in chunks)


def test_an_edit_shows_in_chat_completions_as_in_generate(server):
    """At the default method (scoped), a chat request selects an edit by its last user message, as /generate's
    messages do."""
    before = server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=8,
                                                   temperature=0).choices[0].message.content
    assert server.http.post("/edit", json=EDIT).status_code == 201
    gen = server.generate(messages=QUESTION, max_new_tokens=8)
    after = server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=8, temperature=0)
    text, chunks = chat_stream(server, messages=QUESTION, max_tokens=8, temperature=0)
    assert after.choices[0].message.content == text == gen["text"] != before
    assert after.mend_version == gen["version"] == chunks[0].mend_version == 1


def error_of(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as e:
        call()
    return e.value.status_code, e.value.body


def test_errors_come_in_openai_shape_and_change_nothing(server):
    h0, chat = server.state(), server.openai.chat.completions.create
    status, body = error_of(lambda: chat(model="gpt-4o", messages=QUESTION))
    assert status == 404 and body == {
        "message": f"model 'gpt-4o' is not served here: this server serves '{server.model}' (GET /v1/models)",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    status, body = error_of(lambda: chat(model=server.model, messages=QUESTION, n=2))
    assert status == 400 and body == {"message": "n: only n=1 is supported: this server makes one choice per request",
                                      "type": "invalid_request_error", "param": "n", "code": None}
    status, body = error_of(lambda: chat(model=server.model, messages=[], stream=True))
    assert status == 400 and body["param"] == "messages" and "at least 1 item" in body["message"]
    status, body = error_of(lambda: server.openai.completions.create(model=server.model, prompt="hi", max_tokens=10**6))
    assert status == 400 and body["message"] == "max_tokens is over the limit of 256" and body["param"] == "max_tokens"
    # a lone surrogate, as JSON can escape it (the client would not encode it)
    r = server.http.post("/v1/chat/completions", headers={"content-type": "application/json"},
                         content=b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}'
                         % server.model.encode())
    assert r.status_code == 400 and r.json() == {"error": {
        "message": "messages.0.content: must be valid Unicode (no lone surrogates)", "type": "invalid_request_error",
        "param": "messages.0.content", "code": None}}
    assert server.state() == h0
    # the rest of the API keeps its own shape
    assert server.http.post("/generate", json={"prompt": " "}).json()["detail"] == \
        "prompt: must not be empty or whitespace"


def test_a_key_is_needed_and_works(settings):
    with http_serving(settings.model_copy(update={"api_key": SecretStr("k3y")})) as (app, url):
        good, bad = Server(app, url, key="k3y"), Server(app, url, key="wrong")
        assert [m.id for m in good.openai.models.list()] == [good.model]
        whole = good.openai.chat.completions.create(model=good.model, messages=QUESTION, max_tokens=4, temperature=0)
        assert chat_stream(good, messages=QUESTION, max_tokens=4, temperature=0)[0] == whole.choices[0].message.content
        status, body = error_of(lambda: bad.openai.chat.completions.create(model=bad.model, messages=QUESTION))
        assert status == 401 and body["code"] == "invalid_api_key"


def slowed(monkeypatch, delay: float, fail_after: int | None = None) -> list[int]:
    """Sampling made slow (and, with fail_after, failing after that many tokens): the real pick, called from the
    generation's thread. Returns a list that grows by one a token."""
    real_pick, seen = editor_core.generation.pick, []

    def pick(*args):
        seen.append(0)
        if fail_after is not None and len(seen) > fail_after:
            raise RuntimeError("injected failure")
        time.sleep(delay)
        return real_pick(*args)

    monkeypatch.setattr(editor_core.generation, "pick", pick)
    return seen


def test_a_chat_stream_during_an_edit_sees_one_version(server, monkeypatch):
    before = server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=12,
                                                   temperature=0).choices[0].message.content
    real_pick, paused, resume, picked = editor_core.generation.pick, threading.Event(), threading.Event(), []

    def pausing_pick(*args):  # the real sampling, held at the third token until the edit is applied
        picked.append(0)
        if len(picked) == 3:
            paused.set()
            assert resume.wait(60)
        return real_pick(*args)

    monkeypatch.setattr(editor_core.generation, "pick", pausing_pick)
    stream = server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=12,
                                                   temperature=0, stream=True)
    assert paused.wait(30)
    assert server.http.post("/edit", json=EDIT).status_code == 201 and server.rt.version == 1
    resume.set()
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == before
    assert {c.mend_version for c in chunks} == {0}
    monkeypatch.undo()
    after = server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=12, temperature=0)
    assert after.mend_version == 1 and after.choices[0].message.content != before


def test_concurrent_streams_each_keep_their_own_selection(server, monkeypatch):
    """A scoped edit is selected per request: streams decoded together in one batch, each row with its own edit
    (or none), each say what their own request says alone."""
    assert server.http.post("/edit", json=EDIT).status_code == 201
    asks = [QUESTION, [{"role": "user", "content": "Dogs like to"}]] * 3
    alone = [server.openai.chat.completions.create(model=server.model, messages=m, max_tokens=12,
                                                   temperature=0).choices[0].message.content for m in asks]
    assert alone[0] != alone[1]
    slowed(monkeypatch, 0.02)
    together = [None] * len(asks)

    def ask(i: int) -> None:
        together[i] = chat_stream(server, messages=asks[i], max_tokens=12, temperature=0)[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_a_client_that_leaves_mid_stream_stops_the_generation(either_server, monkeypatch):
    server = either_server
    tokens = slowed(monkeypatch, 0.05)
    stream = server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=256,
                                                   temperature=0, stream=True)
    assert next(stream).choices[0].delta.role == "assistant"  # the generation has started
    stream.close()
    time.sleep(1.0)
    stopped_at = len(tokens)
    time.sleep(0.5)
    assert len(tokens) == stopped_at < 100  # no token since: the worker closed the generation
    monkeypatch.undo()
    # the server goes on: a request, and an edit (in place, it needs the read lock the stream held)
    assert server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=2).choices
    assert server.http.post("/edit", json=EDIT).status_code == 201


def test_a_failure_mid_stream_ends_it_with_an_openai_error(server, monkeypatch):
    slowed(monkeypatch, 0, fail_after=3)
    with pytest.raises(openai.APIError) as e:
        chat_stream(server, messages=QUESTION, max_tokens=16)
    assert e.value.message == "internal error" and e.value.body["type"] == "server_error"
    monkeypatch.undo()
    assert server.openai.chat.completions.create(model=server.model, messages=QUESTION, max_tokens=2).choices
