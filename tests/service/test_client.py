"""service/client.py against a real server (uvicorn on a loopback port, a real embedded Redis) at the default
settings (scoped): every method, the errors as the server words them,
and retries that never apply an edit twice."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from service_support import EDIT, EDIT2, EDIT3, client_serving, http_serving

import editor_core.generation
from service.client import AuthError, Conflict, MendClient, MendError, NoAnswer, NotFound, Rejected
from service.embedded_redis import EmbeddedRedis
from service.errors import AlreadyRolledBack, IdempotencyKeyReused, LogOutcomeUnknown, Unauthorized, UnknownEdit
from service.schemas import EditItem, GenerateChunk, GeneratePublic, Health, RollbackPublic

ROOT = Path(__file__).resolve().parents[2]
OTHER = {"prompt": "Once upon a time there was", "target": "a dragon"}


@pytest.fixture()
def served(settings):
    with client_serving(settings) as (app, mend):
        yield app, mend


def xlen(app) -> int:
    rt = app.state.runtime
    return rt.log.client.xlen(rt.log.key)


def test_edit_list_get_and_roll_back(served):
    app, mend = served
    assert mend.health() == Health(status="ok") and mend.ready().version == 0
    before = mend.generate(EDIT["prompt"], max_new_tokens=4)
    one = mend.edit(**EDIT, author="alice", note="demo")
    (s,) = one.scores
    assert one.version == 1 and s.post_exact and not s.pre_exact and s.post_logprob > s.pre_logprob
    assert mend.generate(EDIT["prompt"], max_new_tokens=4).text.startswith(" Rome") and not before.text.startswith(
        " Rome")
    chat = mend.edit(messages=[{"role": "user", "content": EDIT2["prompt"]},
                               {"role": "assistant", "content": EDIT2["target"]}])
    batch = mend.edit_batch([EDIT3, OTHER], force=True)
    assert (chat.version, batch.version) == (2, 3) and [x.target for x in batch.scores] == ["fifty", "a dragon"]

    record = mend.get_edit(one.edit_id)
    assert (record.status, record.author, record.note, record.requests) == ("active", "alice", "demo",
                                                                            [EditItem(**EDIT)])
    assert mend.get_edit(chat.edit_id).requests == [EditItem(**EDIT2)] and mend.get_edit(batch.edit_id).force
    page = mend.list_edits()
    assert page.count == 3 and {r.edit_id for r in page.data} == {one.edit_id, chat.edit_id, batch.edit_id}

    assert mend.rollback(one.edit_id, author="bob") == RollbackPublic(rolled_back=[one.edit_id], version=4)
    assert mend.generate(EDIT["prompt"], max_new_tokens=4) == before.model_copy(update={"version": 4})
    assert mend.rollback(to_version=0).rolled_back == [batch.edit_id, chat.edit_id]
    gone = mend.list_edits(status="rolled_back", limit=2)
    assert gone.count == 3 and len(gone.data) == 2 and mend.list_edits(status="active").count == 0
    assert mend.get_edit(one.edit_id).rollback["author"] == "bob"
    assert "mend_edits_total 3.0" in mend.metrics() and mend.ready().active_edits == 0 and xlen(app) == 5


def test_a_dry_run_previews_the_edit_and_writes_nothing(served):
    app, mend = served
    preview = mend.dry_run(**EDIT, probes=[OTHER])
    assert preview.version == 0 and [p.target for p in preview.probes] == ["a dragon"]
    assert preview.replies[0].after.startswith(" Rome") and not preview.guard.would_refuse
    assert xlen(app) == 0 and mend.list_edits().count == 0
    assert mend.edit(**EDIT).scores == preview.scores


def test_score_shows_the_edit_on_its_prompt_only(served):
    _, mend = served
    before = mend.score([EDIT, OTHER])
    mend.edit(**EDIT)
    after = mend.score([EditItem(**EDIT), OTHER])
    assert (before.version, after.version) == (0, 1)
    assert after.scores[0].exact and not before.scores[0].exact and after.scores[1] == before.scores[1]


@pytest.mark.parametrize("body", [
    {"prompt": "Once upon a time", "max_new_tokens": 12},
    {"prompt": "Once upon a time", "max_new_tokens": 24, "temperature": 1.5, "top_p": 0.95, "seed": 3},
    {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_new_tokens": 12,
     "temperature": 0.8, "seed": 5, "stop": ["\n"]},
])
def test_a_streamed_generation_is_the_whole_one(served, body):
    _, mend = served
    whole = mend.generate(**body)
    *pieces, last = mend.generate_stream(**body)
    assert len(pieces) > 1 and all(type(c) is GenerateChunk and c.text for c in pieces)
    assert "".join(c.text for c in pieces) == whole.text
    assert type(last) is GeneratePublic and last == whole.model_copy(update={"text": ""})


def test_a_generation_failing_mid_stream_raises_the_servers_error(served, monkeypatch):
    _, mend = served
    real_pick, picked = editor_core.generation.pick, []

    def failing_pick(*args):  # the real sampling, failing at the 7th token
        picked.append(0)
        if len(picked) > 6:
            raise RuntimeError("injected failure")
        return real_pick(*args)

    monkeypatch.setattr(editor_core.generation, "pick", failing_pick)
    got = []
    with pytest.raises(MendError) as e:
        got.extend(mend.generate_stream("Once upon a time", max_new_tokens=16))
    assert (e.value.status, e.value.detail) == (500, "internal error")
    assert got and all(type(c) is GenerateChunk for c in got)  # what came before the failure, delivered


def test_errors_carry_the_servers_status_and_message(settings):
    with client_serving(settings.model_copy(update={"max_new_tokens": 8})) as (app, mend):
        for call in (lambda: mend.generate("hi", max_new_tokens=9), lambda: next(mend.generate_stream(
                "hi", max_new_tokens=9))):
            with pytest.raises(Rejected) as e:
                call()
            assert (e.value.status, e.value.detail) == (422, "max_new_tokens is over the limit of 8")
        with pytest.raises(NotFound) as e:
            mend.get_edit("no-such-edit")
        assert (e.value.status, e.value.detail) == (404, UnknownEdit.message)
        eid = mend.edit(**EDIT, idempotency_key="k1").edit_id
        mend.rollback(eid)
        with pytest.raises(Conflict) as e:
            mend.rollback(eid)
        assert (e.value.status, e.value.detail) == (409, AlreadyRolledBack.message)
        with pytest.raises(Rejected) as e:
            mend.edit(**EDIT2, idempotency_key="k1")
        assert e.value.detail == IdempotencyKeyReused.message and xlen(app) == 2


def test_the_api_key_is_sent_and_a_wrong_one_refused(settings):
    with http_serving(settings.model_copy(update={"api_key": SecretStr("k3y")})) as (_, url):
        with MendClient(url, api_key="k3y") as good, MendClient(url, api_key="wrong") as bad, MendClient(url) as none:
            assert good.edit(**EDIT).version == 1 and good.list_edits().count == 1
            for c in (bad, none):
                with pytest.raises(AuthError) as e:
                    c.list_edits()
                assert (e.value.status, e.value.detail) == (401, Unauthorized.message)
            assert none.ready().ready  # the probes need no key


def test_a_retry_after_a_timeout_returns_the_first_outcome_and_edits_once(settings, monkeypatch):
    """The edit takes longer than the client waits: the client gives up on the first try and sends it again with its
    key; the retry waits for the first to land and answers with its outcome."""
    with http_serving(settings) as (app, url), MendClient(url, timeout=1.0, retries=6, backoff=0.1) as mend:
        method, computed = app.state.runtime.method, []
        real = method.compute

        def slow(requests, prefix=None):
            computed.append(requests)
            time.sleep(2.5)
            return real(requests, prefix)

        monkeypatch.setattr(method, "compute", slow)
        keys = []
        mend.http.event_hooks["request"].append(lambda r: keys.append(r.headers.get("Idempotency-Key")))
        out = mend.edit(**EDIT)
        assert len(keys) > 1 and len(set(keys)) == 1 and keys[0]  # timed out, retried with the same key
        assert len(computed) == 1 and xlen(app) == 1
        assert (out.edit_id, out.version) == (mend.list_edits().data[0].edit_id, 1)


def test_a_503_with_the_outcome_unknown_is_retried_and_finds_the_write(settings, monkeypatch):
    """Redis stops answering with the rollback's write on its way: the server says the outcome is unknown (503), the
    client retries with the same key and learns that the write landed, once."""
    with client_serving(settings) as (app, mend):
        eid = mend.edit(**EDIT).edit_id
        rt = app.state.runtime
        pid, real = rt.embedded.proc.pid, rt.log.append

        def stalled(event, after):
            monkeypatch.setattr(rt.log, "append", real)
            os.kill(pid, signal.SIGSTOP)
            try:
                return real(event, after)
            finally:
                os.kill(pid, signal.SIGCONT)

        monkeypatch.setattr(rt.log, "append", stalled)
        answers = []
        mend.http.event_hooks["response"].append(lambda r: answers.append((r.status_code, r.read() and r.json())))
        assert mend.rollback(eid) == RollbackPublic(rolled_back=[eid], version=2)
        assert answers[0] == (503, {"detail": LogOutcomeUnknown.message}) and answers[-1][0] == 200
        assert xlen(app) == 2 and mend.get_edit(eid).status == "rolled_back"


def test_ready_says_why_not_instead_of_raising(settings, tmp_path: Path):
    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        with client_serving(settings.model_copy(update={"redis_url": redis_server.url})) as (_, mend):
            assert mend.ready().ready
            redis_server.stop()
            ready = mend.ready()
            assert not ready.ready and ready.reason == "edit log (Redis) unreachable"
    finally:
        redis_server.stop()


def test_no_server_is_no_answer_after_the_retries():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with MendClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.01) as mend:
        tries = []
        mend.http.event_hooks["request"].append(tries.append)
        with pytest.raises(NoAnswer) as e:
            mend.health()
    assert e.value.status is None and len(tries) == 3 and isinstance(e.value.__cause__, httpx.ConnectError)


def test_the_client_imports_no_torch():
    """A client machine needs httpx, httpx-sse and pydantic, not the model's stack."""
    heavy = ("torch", "transformers", "fastapi", "redis")
    code = f"import sys, service.client; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_list_filters_and_export(served, tmp_path: Path):
    _app, mend = served
    one = mend.edit(**EDIT, author="alice")
    two = mend.edit(**EDIT2, author="bob")
    mend.rollback(one.edit_id)
    assert [r.edit_id for r in mend.list_edits(author="bob").data] == [two.edit_id]
    assert [r.edit_id for r in mend.list_edits(order="newest").data] == [two.edit_id, one.edit_id]
    # Scoped (the default): one adapter per active edit and a manifest; merged weights would apply it everywhere.
    path = mend.export(tmp_path / "edits.zip")
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("/manifest.json")))
    assert manifest["version"] == 3 and [a["edit_id"] for a in manifest["adapters"]] == [two.edit_id]
    with pytest.raises(Conflict) as refused:
        mend.export(tmp_path / "merged.zip", "merged")
    assert "scoped" in refused.value.detail and not list(tmp_path.glob("merged.zip*"))
