"""service/snapshot.py through a restart: a scoped server writes the derived state on shutdown, the next start
reads it and replays only the events after it, to the same state as a full replay; a snapshot that is stale,
foreign or damaged is refused and the log replayed whole."""
from __future__ import annotations

import json
import logging

from service_support import EDIT, EDIT2, EDIT3, serving

from service import snapshot


def state(client) -> tuple:
    scores = client.post("/score", json={"items": [EDIT, EDIT2, EDIT3]}).json()["scores"]
    edits = client.get("/edits").json()
    return client.get("/ready").json()["version"], scores, edits


def test_a_restart_reads_the_snapshot_and_replays_only_the_tail(settings, caplog):
    caplog.set_level(logging.INFO, logger="service.replica")
    with serving(settings) as client:
        for e in (EDIT, EDIT2):
            assert client.post("/edit", json=e).status_code == 201
        key = client.app.state.runtime.log.key
    snap_dir = snapshot.folder_for(settings.data_dir, key)
    assert json.loads((snap_dir / snapshot.MANIFEST).read_text())["version"] == 2  # written on shutdown
    no_snapshots = settings.model_copy(update={"snapshot_every": 0})
    with serving(no_snapshots) as client:  # a replica that writes none: its events are the tail
        eid = client.post("/edit", json=EDIT3).json()["edit_id"]
        assert client.post("/rollback", json={"edit_id": client.get("/edits").json()["data"][0]["edit_id"]}
                           ).status_code == 200
        assert client.get(f"/edits/{eid}").status_code == 200
        want = state(client)
    caplog.clear()
    with serving(settings) as client:
        assert state(client) == want
    assert any("restored the snapshot at version 2 and applied 2 events" in r.message for r in caplog.records)
    with serving(no_snapshots) as client:  # a full replay agrees
        assert state(client) == want


def test_a_damaged_or_foreign_snapshot_is_refused_and_the_log_replayed_whole(settings, caplog):
    with serving(settings) as client:
        assert client.post("/edit", json=EDIT).status_code == 201
        key = client.app.state.runtime.log.key
        want = state(client)
    folder = snapshot.folder_for(settings.data_dir, key)
    manifest = json.loads((folder / snapshot.MANIFEST).read_text())
    # Each damage reads `manifest` when it is done: the one the start just before it wrote.
    for damage, words in ((lambda: (folder / snapshot.STATE).write_text("{}"), "does not match its manifest"),
                          (lambda: (folder / snapshot.MANIFEST).write_text(json.dumps(
                              {**manifest, "checks": "x"})), "another log or scope"),  # noqa: B023
                          (lambda: (folder / snapshot.MANIFEST).write_text(json.dumps(
                              {**manifest, "event_id": "1-0"})), "is not in")):  # noqa: B023
        with serving(settings) as client:  # each start writes a good one again on shutdown
            pass
        manifest = json.loads((folder / snapshot.MANIFEST).read_text())
        damage()
        caplog.clear()
        with serving(settings) as client:
            assert state(client) == want
        assert any(words in r.message for r in caplog.records), words


def test_an_indexed_codebook_serves_rolls_back_and_restarts_as_the_exact_scan_does(settings):
    indexed = settings.model_copy(update={"index_min_rows": 2})  # the graph from the second key row on

    def seen(client) -> tuple:
        replies = [client.post("/generate", json={"prompt": e["prompt"], "max_new_tokens": 6}).json()["text"]
                   for e in (EDIT, EDIT2, EDIT3)]
        return state(client), replies

    with serving(indexed) as client:
        ids = [client.post("/edit", json=e).json()["edit_id"] for e in (EDIT, EDIT2, EDIT3)]
        assert client.post("/rollback", json={"edit_id": ids[1]}).status_code == 200
        assert client.app.state.runtime.method.view().rows.index is not None
        want = seen(client)
    assert [want[1][0].startswith(" Rome"), want[1][2].startswith(" fifty")] == [True, True]
    with serving(indexed) as client:  # from the snapshot, its graph read back
        assert client.app.state.runtime.method.view().rows.index is not None
        assert seen(client) == want
    with serving(settings.model_copy(update={"snapshot_every": 0})) as client:
        assert client.app.state.runtime.method.view().rows.index is None  # a full replay, scanning
        assert seen(client) == want
