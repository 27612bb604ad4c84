"""POST /generate (routes/generate.py, editor_core/generation.py), streamed or not, and how it interleaves with edits
(runtime.py): at the default method (scoped), the interleavings under each method."""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import pytest
from service_support import EDIT, EDIT2, EDIT3, serving

import editor_core.generation
from editor_core.generation import settled
from editor_core.scope import PLAIN


@pytest.fixture()
def either_client(either):
    with serving(either) as client:
        yield client


@pytest.fixture()
def strict_client(settings):
    with serving(settings.model_copy(update={"max_new_tokens": 8})) as client:
        yield client


def generate(client, **body) -> dict:
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def streamed(client, **body) -> list[dict]:
    """The events of /generate with stream: true, each event's data."""
    r = client.post("/generate", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    return [json.loads(line.removeprefix("data: ")) for line in r.text.splitlines() if line.startswith("data: ")]


def test_greedy_is_deterministic_and_reports_counts(client):
    a = generate(client, prompt="Once upon a time", max_new_tokens=6)
    assert a == generate(client, prompt="Once upon a time", max_new_tokens=6)
    assert a["completion_tokens"] == 6 and a["finish_reason"] == "length" and a["version"] == 0
    assert a["prompt_tokens"] == len(client.app.state.runtime.tokenizer("Once upon a time")["input_ids"])


def test_seeded_sampling_is_reproducible(client):
    body = {"prompt": "Once upon a time", "max_new_tokens": 8, "temperature": 1.5, "top_p": 0.95}
    a, b = generate(client, **body, seed=1), generate(client, **body, seed=1)
    others = {generate(client, **body, seed=s)["text"] for s in range(2, 6)}
    assert a["text"] == b["text"] and others - {a["text"]}


def test_stop_strings_cut_the_text(client):
    full = generate(client, prompt="The capital of France is", max_new_tokens=6)["text"]
    stop = full.split()[1]  # the greedy text repeats a word; stop at its second occurrence
    cut = generate(client, prompt="The capital of France is", max_new_tokens=6, stop=[" " + stop])
    assert cut["finish_reason"] == "stop" and stop not in cut["text"] and full.startswith(cut["text"])


def test_messages_go_through_the_chat_template(client):
    tok = client.app.state.runtime.tokenizer
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    out = generate(client, messages=msgs, max_new_tokens=3)
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert out["prompt_tokens"] == len(tok(text, add_special_tokens=False)["input_ids"])
    assert out["text"] == generate(client, prompt=text, max_new_tokens=3)["text"]


SAMPLED = {"prompt": "Once upon a time", "max_new_tokens": 24, "temperature": 1.5, "top_p": 0.95, "seed": 3}


@pytest.mark.parametrize("body", [
    {"prompt": "Once upon a time", "max_new_tokens": 12},
    SAMPLED,
    {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_new_tokens": 12,
     "temperature": 0.8, "seed": 5},
])
def test_a_streamed_generation_adds_up_to_the_whole_one(client, body):
    whole = generate(client, **body)
    *pieces, last = streamed(client, **body)
    assert len(pieces) > 1 and all(set(e) == {"text"} and e["text"] for e in pieces)
    assert "".join(e["text"] for e in pieces) == whole["text"]
    assert last == {**whole, "text": ""}  # the last event: finish_reason, counts and version


def test_a_stream_never_sends_text_past_a_stop_string(client):
    pieces = [e["text"] for e in streamed(client, **SAMPLED)[:-1]]
    full, boundary = "".join(pieces), len("".join(pieces[:3]))
    crossing = full[boundary - 2: boundary + 3]  # starts inside the third piece, ends inside the fourth
    never = full[boundary - 2: boundary + 2] + "\x00"  # its start is held back, then sent at the end
    for stop in ([crossing], [never, crossing], [never]):
        whole = generate(client, **SAMPLED, stop=stop)
        *sent, last = streamed(client, **SAMPLED, stop=stop)
        assert "".join(e["text"] for e in sent) == whole["text"] == full[: full.find(crossing) if crossing in
                                                                          stop else len(full)]
        assert last["finish_reason"] == whole["finish_reason"] == ("stop" if crossing in stop else "length")


@pytest.mark.parametrize("text,stop,end", [
    ("Hello wor", [" world"], 5),  # may become the stop string
    ("Hello wor", ["x", "wor!", " w"], 6),  # the earliest possible start
    ("a\n", ["\n\n"], 1),
    ("Hello ", [], 5),  # a trailing space may be dropped by the next token (clean_up_tokenization_spaces)
    ("Hello\n", [], 6),  # a newline is not: sent at once
    ("caf\ufffd", [], 3),  # an incomplete UTF-8 sequence
    ("Hello", [], 5),
])
def test_settled_holds_back_what_the_next_token_may_change(text, stop, end):
    assert settled(text, stop) == end


def test_a_bad_streamed_request_is_refused_before_the_stream(strict_client):
    r = strict_client.post("/generate", json={"prompt": "hi", "max_new_tokens": 9, "stream": True})
    assert r.status_code == 422 and r.json() == {"detail": "max_new_tokens is over the limit of 8"}


def test_a_stream_during_an_edit_sees_one_version(either_client, monkeypatch):
    """A stream paused mid-way while an edit is made finishes on the version it started on: the edit is applied
    meanwhile (scoped) or waits for the stream's read lock (in place)."""
    client, rt = either_client, either_client.app.state.runtime
    body = {"prompt": EDIT["prompt"], "max_new_tokens": 12}
    before = generate(client, **body)
    real_pick, paused, resume, picked = editor_core.generation.pick, threading.Event(), threading.Event(), []

    def pausing_pick(*args):  # the real sampling, held at the third token until the edit had its chance
        picked.append(rt.version)
        if len(picked) == 3:
            paused.set()
            assert resume.wait(60)
        return real_pick(*args)

    monkeypatch.setattr(editor_core.generation, "pick", pausing_pick)
    events = []
    streaming = threading.Thread(target=lambda: events.extend(streamed(client, **body)))
    streaming.start()
    assert paused.wait(30)
    editing = threading.Thread(target=lambda: client.post("/edit", json=EDIT))
    editing.start()
    editing.join(timeout=60 if rt.method.weights_fixed else 2)
    assert rt.version == (1 if rt.method.weights_fixed else 0)  # applied, or waiting for the stream to end
    resume.set()
    streaming.join()
    editing.join()
    monkeypatch.undo()
    assert "".join(e["text"] for e in events[:-1]) == before["text"] and events[-1]["version"] == 0
    after = generate(client, **body)
    assert after["version"] == 1 and after["text"] != before["text"]


def test_generations_during_edits_each_see_one_whole_version(either_client):
    """Generations race three edits; every generation reporting version v must produce the same text."""
    client = either_client
    seen: dict[int, set[str]] = defaultdict(set)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            out = generate(client, prompt=EDIT["prompt"], max_new_tokens=3)
            seen[out["version"]].add(out["text"])

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for e in (EDIT, EDIT2, EDIT3):
        assert client.post("/edit", json=e).status_code == 201
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert all(len(texts) == 1 for texts in seen.values()), dict(seen)
    assert seen[0] and max(seen) == 3


def test_computing_a_delta_does_not_block_generation(either_client):
    """The delta is computed under the read lock: a generation started meanwhile finishes without waiting."""
    client, rt = either_client, either_client.app.state.runtime
    # scoped: one delta per form of each edit
    method = "compute_delta" if rt.method.name == "inplace" else "compute_deltas"
    real, computing = getattr(rt.editor, method), threading.Event()

    def slow_compute(*args, **kw):  # the real computation, made long enough to overlap with a generation
        computing.set()
        time.sleep(2.0)
        return real(*args, **kw)

    setattr(rt.editor, method, slow_compute)
    editing = threading.Thread(target=lambda: client.post("/edit", json=EDIT))
    editing.start()
    assert computing.wait(10)
    t0 = time.perf_counter()
    out = generate(client, prompt="hi", max_new_tokens=2)
    waited = time.perf_counter() - t0
    editing.join()
    assert out["version"] == 0 and waited < 1.5, waited
    assert rt.version == 1


def test_a_scoped_generation_never_waits_behind_an_apply(client):
    """At the default method the weights never change, so a generation reads the published codebook and takes no
    lock: it finishes while an edit is being applied (here made slow, holding the write lock), on the version
    before it. In place, the same generation would wait for the apply to finish."""
    rt = client.app.state.runtime
    assert rt.method.weights_fixed
    real, applying = rt.method.apply, threading.Event()

    def slow_apply(*args, **kw):  # runs under the write lock
        applying.set()
        time.sleep(2.0)
        return real(*args, **kw)

    rt.method.apply = slow_apply
    editing = threading.Thread(target=lambda: client.post("/edit", json=EDIT))
    editing.start()
    assert applying.wait(30)
    t0 = time.perf_counter()
    out = generate(client, prompt=EDIT["prompt"], max_new_tokens=2)
    waited = time.perf_counter() - t0
    editing.join()
    assert out["version"] == 0 and waited < 1.5, waited
    assert rt.version == 1 and generate(client, prompt=EDIT["prompt"], max_new_tokens=2)["version"] == 1


def test_score_matches_what_edit_reports_and_changes_only_through_edits(client):
    items = [{"prompt": EDIT["prompt"], "target": EDIT["target"]},
             {"prompt": "Water boils at", "target": "100 degrees"}]
    before = client.post("/score", json={"items": items})
    assert before.status_code == 200, before.text
    b = before.json()
    assert b["version"] == 0 and [s["prompt"] for s in b["scores"]] == [i["prompt"] for i in items]
    assert len(b["scores"][1]["argmax_ids"]) == len(client.app.state.runtime.tokenizer(" 100 degrees")["input_ids"])
    edit = client.post("/edit", json=EDIT).json()
    assert b["scores"][0]["logprob"] == edit["scores"][0]["pre_logprob"]
    after = client.post("/score", json={"items": items}).json()
    assert after["version"] == 1 and after["scores"][0]["exact"] and not b["scores"][0]["exact"]
    # /edit scored the edit alone, /score beside another item: the scoped delta's batched product runs over other
    # rows, which may round differently in the last bit
    assert after["scores"][0]["logprob"] == pytest.approx(edit["scores"][0]["post_logprob"], rel=1e-6, abs=1e-5)
    assert client.post("/score", json={"items": items}).json() == after  # scoring writes nothing


def test_score_rejects_bad_input(client):
    assert client.post("/score", json={"items": []}).status_code == 422
    assert client.post("/score", json={"items": [{"prompt": " ", "target": "x"}]}).status_code == 422
    limits = client.app.state.runtime.settings
    too_long = {"items": [{"prompt": "word " * (limits.max_prompt_tokens + 1), "target": "x"}]}
    r = client.post("/score", json=too_long)
    assert r.status_code == 422 and r.json()["detail"] == \
        f"prompt is longer than the limit of {limits.max_prompt_tokens} tokens"
    long_target = {"items": [{"prompt": "x", "target": "word " * (limits.max_new_tokens + 1)}]}
    r = client.post("/score", json=long_target)
    assert r.status_code == 422 and r.json()["detail"] == \
        f"target is longer than the limit of {limits.max_new_tokens} tokens"
    # beyond the editor's 64-token window but within the limits: scored, not refused
    assert client.post("/score", json={"items": [{"prompt": "word " * 70, "target": "x"}]}).status_code == 200


def test_a_score_in_new_words_makes_its_piece_before_taking_the_lock(client, monkeypatch):
    """A /score prompt in other words than an edit's costs an edit's compute for its piece: done outside the read
    lock, no edit's apply waits behind it, and the score is still taken with the piece where it fits."""
    rt = client.app.state.runtime
    assert client.post("/edit", json=EDIT).status_code == 201
    other = "Tell me at once. " + EDIT["prompt"]
    started, release, real = threading.Event(), threading.Event(), rt.method.scope.worded_for

    def held(model, tok, editor, text, *rest, **kw):
        if text == other:
            started.set()
            assert release.wait(60)
        return real(model, tok, editor, text, *rest, **kw)

    monkeypatch.setattr(rt.method.scope, "worded_for", held)  # what the service calls for a new wording
    scored = []
    item = {"prompt": other, "target": EDIT["target"]}
    waiting = threading.Thread(target=lambda: scored.append(client.post("/score", json={"items": [item]})))
    waiting.start()
    try:
        assert started.wait(60)
        assert client.post("/edit", json=EDIT2).status_code == 201  # applied while the piece is being made
    finally:
        release.set()
        waiting.join(60)
    (r,) = scored
    assert r.status_code == 200 and r.json()["version"] == 2
    again = client.post("/score", json={"items": [item]}).json()  # the piece now cached: the same score
    assert again["scores"] == r.json()["scores"]


def test_the_library_says_what_the_service_serves(client):
    """`mend eval --generate` judges replies made in process (evaluate.local_generate); they are the service's
    /generate replies, plain and chat, with the scoped edit selected and released the same way, and a question in
    other words given the piece made for them (MEND_REWORD, the default)."""
    from editor_core.data import EditRequest
    from editor_core.evaluate import local_generate, score

    rt = client.app.state.runtime
    assert rt.settings.reword
    assert client.post("/edit", json=EDIT).status_code == 201
    scope = rt.method.scope

    def reword(text, form):
        return scope.worded(rt.model, rt.tokenizer, rt.method.editor, text, form, None, **rt.method.compress)

    lib = local_generate(rt.model, rt.tokenizer, scope, reword=reword)
    other = "Tell me at once. " + EDIT["prompt"]  # its last sentence selects the edit; the whole is other words
    assert reword(other, PLAIN) is not None
    prompts = (EDIT["prompt"], EDIT2["prompt"], other)
    replies = lib([*((p, None, 8) for p in prompts), *((None, p, 8) for p in prompts)])  # decoded as one batch
    served = [generate(client, prompt=p, max_new_tokens=8)["text"] for p in prompts]
    served += [generate(client, messages=[{"role": "user", "content": p}], max_new_tokens=8)["text"] for p in prompts]
    assert replies == served
    # replies that say the target either way cannot tell the pieces apart; teacher-forced scores can
    item = EditRequest(other, EDIT["target"])
    served = client.post("/score", json={"items": [{"prompt": other, "target": EDIT["target"]}]}).json()["scores"][0]
    assert score(rt.model, rt.tokenizer, [item], scope=scope, reword=reword)[0].logprob == \
        pytest.approx(served["logprob"], rel=1e-6, abs=1e-5)
    assert score(rt.model, rt.tokenizer, [item], scope=scope)[0].logprob != \
        pytest.approx(served["logprob"], rel=1e-3, abs=1e-3)  # the edit prompt's piece scores otherwise
