"""service/methods.py: what each edit method logs and how it serves it back. Scoped (the default) logs an edit as
its definition; its factors are derived state, held in a bounded store and recomputed when needed, and a
recomputed edit says what the edit-time one said."""
from __future__ import annotations

from service_support import EDIT, EDIT2, EDIT3, serving

from editor_core import DIGEST, LowRankDelta

CHAT = {"messages": [{"role": "user", "content": EDIT["prompt"]}], "max_new_tokens": 12}


def replies(client, *edits) -> list[str]:
    """Greedy replies to each edit's prompt, plain and in chat, longer than the answer."""
    out = []
    for e in edits:
        for body in ({"prompt": e["prompt"], "max_new_tokens": 12},
                     {"messages": [{"role": "user", "content": e["prompt"]}], "max_new_tokens": 12}):
            r = client.post("/generate", json=body)
            assert r.status_code == 200, r.text
            out.append(r.json()["text"])
    return out


def logged(client) -> list[bytes]:
    rt = client.app.state.runtime
    return [e.delta for e in rt.log.read_after("0")]


def test_a_scoped_edit_is_logged_as_its_definition_not_its_factors(settings):
    with serving(settings) as client:
        assert client.post("/edit", json=EDIT).status_code == 201
        (raw,) = logged(client)
        definition = LowRankDelta.from_bytes(raw)
        assert definition.factors == {} and DIGEST in definition.meta and definition.key is not None
        held = client.app.state.runtime.method.scope.store
        assert len(held) == 1 and held.stats.misses == 0  # the edit-time factors are kept: nothing recomputed
        entry = client.get(f"/edits/{client.get('/edits').json()['data'][0]['edit_id']}").json()
        assert entry["bytes"] > len(raw)  # the factors it would have logged are far more than its definition


def test_a_recomputed_edit_says_what_the_edit_time_one_said(settings):
    with serving(settings) as client:
        for e in (EDIT, EDIT2):
            assert client.post("/edit", json=e).status_code == 201
        said = replies(client, EDIT, EDIT2, EDIT3)
        assert said[0].startswith(" Rome") and said[2].startswith(" Mars")
        store = client.app.state.runtime.method.scope.store
        store.clear()  # as after eviction
        assert replies(client, EDIT, EDIT2, EDIT3) == said
        assert (store.stats.misses, store.stats.mismatches) == (2, 0)  # each recomputed once, bit for bit
        metrics = client.get("/metrics").text
        assert "mend_piece_recomputes 2.0" in metrics and "mend_piece_recompute_mismatches 0.0" in metrics
    with serving(settings) as client:  # a restart holds no factors: the replayed definitions are recomputed
        assert replies(client, EDIT, EDIT2, EDIT3) == said
        assert client.app.state.runtime.method.scope.store.stats.mismatches == 0


def test_a_bounded_store_serves_every_edit_and_holds_only_what_fits(settings):
    with serving(settings.model_copy(update={"piece_cache_mb": 1})) as client:
        store = client.app.state.runtime.method.scope.store
        store.max_bytes = 1  # below one edit: only the latest is held
        for e in (EDIT, EDIT2, EDIT3):
            assert client.post("/edit", json=e).status_code == 201
        assert len(store) == 1
        first = replies(client, EDIT, EDIT2, EDIT3)
        assert len(store) == 1 and store.stats.misses >= 2
        assert replies(client, EDIT, EDIT2, EDIT3) == first
        assert store.stats.mismatches == 0
        # Rolled back, an edit is not selected, held or not.
        edit_id = client.get("/edits", params={"order": "newest"}).json()["data"][0]["edit_id"]
        assert client.post("/rollback", json={"edit_id": edit_id}).status_code == 200
        assert replies(client, EDIT3) != first[4:]


def test_edits_logged_whole_by_older_servers_replay_from_their_factors(settings, monkeypatch):
    from service.methods import Scoped

    monkeypatch.setattr(Scoped, "logged", lambda self, delta: delta)  # as servers logged before definitions
    with serving(settings) as client:
        assert client.post("/edit", json=EDIT).status_code == 201
        assert LowRankDelta.from_bytes(logged(client)[0]).factors  # the factors are in the log
        said = replies(client, EDIT)
    monkeypatch.undo()
    with serving(settings) as client:
        assert replies(client, EDIT) == said
        assert client.app.state.runtime.method.scope.store.stats.misses == 0  # nothing to recompute
