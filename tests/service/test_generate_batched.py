"""Concurrent generations decoded together (service/batcher.py): through HTTP each says what it says alone, on one
whole version, streamed or not."""
from __future__ import annotations

import json
import threading
import time

import pytest
from service_support import EDIT, EDIT2, serving

import editor_core.generation

CHAT = [{"role": "user", "content": EDIT["prompt"]}]


@pytest.fixture()
def either_client(either):
    with serving(either) as client:
        yield client


def generate(client, body: dict) -> dict:
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def streamed(client, body: dict) -> dict:
    """A streamed /generate as the whole reply: its pieces joined, and the last event's counts and version."""
    r = client.post("/generate", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    events = [json.loads(line.removeprefix("data: ")) for line in r.text.splitlines() if line.startswith("data: ")]
    return {**events[-1], "text": "".join(e["text"] for e in events[:-1])}


def slowed(monkeypatch, rt, delay: float) -> dict:
    """The real sampling, slowed so that requests overlap; records the largest batch and, per token, the versions of
    the generations in the batch."""
    real, seen = editor_core.generation.pick, {"rows": 0, "versions": []}

    def pick(*args):
        seen["rows"] = max(seen["rows"], len(rt.batcher._batch.rows))
        seen["versions"].append({t.g.version for t in rt.batcher._running})
        time.sleep(delay)
        return real(*args)

    monkeypatch.setattr(editor_core.generation, "pick", pick)
    return seen


def together(fns: list) -> list:
    """Run the calls at once, each in a thread of its own; their results in order."""
    out = [None] * len(fns)

    def run(i: int) -> None:
        out[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_concurrent_requests_say_what_each_says_alone(client, monkeypatch):
    """At the default method, with an edit that some requests select: greedy and seeded requests of different
    lengths, a stop string, chat and plain, streamed and not, decoded together, each equal to the same request
    sent alone."""
    assert client.post("/edit", json=EDIT).status_code == 201
    bodies = [{"prompt": EDIT["prompt"], "max_new_tokens": 10},  # selects the edit
              {"messages": CHAT, "max_new_tokens": 8},  # the same edit, asked in chat
              {"prompt": "Once upon a time", "max_new_tokens": 6},
              {"prompt": "Hi", "max_new_tokens": 12, "temperature": 1.3, "top_p": 0.9, "seed": 4},
              {"prompt": "The weather today is", "max_new_tokens": 7, "temperature": 0.8, "seed": 9},
              {"prompt": EDIT2["prompt"], "max_new_tokens": 9}]
    free = generate(client, bodies[-1])["text"]
    bodies.append({**bodies[-1], "stop": [" " + free.split()[1]]})  # stops at its own second word
    alone = [generate(client, b) for b in bodies]
    assert alone[0]["text"].startswith(" " + EDIT["target"]) and alone[-1]["finish_reason"] == "stop"
    seen = slowed(monkeypatch, client.app.state.runtime, 0.02)
    calls = [lambda b=b: generate(client, b) for b in bodies] + [lambda b=b: streamed(client, b) for b in bodies]
    assert together(calls) == alone + alone
    assert seen["rows"] >= 4  # decoded together, not one after another


def test_an_edit_during_a_batch_leaves_each_reply_on_one_version(either_client, monkeypatch):
    """An edit comes while a batch runs, and more generations once it is under way: each reply is what its
    reported version says alone. In place, no batch ever holds rows of two versions: the edit waits for the batch
    to drain, and the requests that come while it waits join after it."""
    client, rt = either_client, either_client.app.state.runtime
    prompts = [EDIT["prompt"], "Once upon a time", EDIT2["prompt"], "Hi"]
    body = {"max_new_tokens": 10}
    before = {p: generate(client, {"prompt": p, **body})["text"] for p in prompts}
    seen = slowed(monkeypatch, rt, 0.03)

    def edit() -> int:
        wait_for(lambda: seen["rows"] >= 2)  # the batch runs
        return client.post("/edit", json=EDIT).status_code

    def later(p: str) -> dict:
        wait_for(lambda: rt.version == 1 if rt.method.weights_fixed else rt.rw.writer_waiting())
        return generate(client, {"prompt": p, **body})

    results = together([lambda p=p: generate(client, {"prompt": p, **body}) for p in prompts] + [edit]
                       + [lambda p=p: later(p) for p in prompts])
    monkeypatch.undo()
    assert results[len(prompts)] == 201 and rt.version == 1
    after = {p: generate(client, {"prompt": p, **body})["text"] for p in prompts}
    assert after[EDIT["prompt"]] != before[EDIT["prompt"]]
    first, second = results[:len(prompts)], results[len(prompts) + 1:]
    for p, r in zip(prompts + prompts, first + second):
        assert r["text"] == (before if r["version"] == 0 else after)[p], (p, r)
    assert 0 in {r["version"] for r in first}  # the edit came while these ran (some may have joined after it)
    assert [r["version"] for r in second] == [1] * len(prompts)  # after it: in place, held back until it applied
    if not rt.method.weights_fixed:
        assert all(len(v) <= 1 for v in seen["versions"])


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
