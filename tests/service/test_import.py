"""POST /edits/import at the default (scoped): many edits logged at once as definitions, each delta computed at its
first selection; the replies are those of the same edits made with /edit; each item is idempotent, so an import
sent again after a crash writes only what had not landed; bad items are reported and lose nothing else."""
from __future__ import annotations

import json
import time

from service_support import EDIT, EDIT2, EDIT3, http_serving, serving

from service.client import MendClient
from service.embedded_redis import EmbeddedRedis

ITEMS = [EDIT, EDIT2, EDIT3]


def wait_for_version(client, version: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while client.app.state.runtime.version < version:
        assert time.monotonic() < deadline, f"replica stuck at version {client.app.state.runtime.version}"
        time.sleep(0.05)


def replies(client) -> list[str]:
    return [client.post("/generate", json={"prompt": e["prompt"], "max_new_tokens": 8}).json()["text"]
            for e in ITEMS]


def chat_replies(client) -> list[str]:
    return [client.post("/generate", json={"messages": [{"role": "user", "content": e["prompt"]}],
                                           "max_new_tokens": 8}).json()["text"] for e in ITEMS]


def test_imported_edits_answer_as_edits_made_one_by_one(settings):
    with serving(settings) as client:
        for e in ITEMS:
            assert client.post("/edit", json=e).status_code == 201
        want = replies(client), chat_replies(client)
    with serving(settings.model_copy(update={"redis_url": None, "data_dir": settings.data_dir.parent / "other"})) \
            as client:
        r = client.post("/edits/import", json={"items": ITEMS, "author": "kb"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["imported"], out["repeated"], out["version"]) == (3, 0, 3)
        assert [i["status"] for i in out["items"]] == ["imported"] * 3
        record = client.get(f"/edits/{out['items'][0]['edit_id']}").json()
        assert record["computed"] == "at first selection" and record["author"] == "kb"
        got = replies(client), chat_replies(client)
        assert got == want
        assert got[0][0].startswith(" Rome") and got[1][0].strip().startswith("Rome")
        made = client.post("/edit", json=EDIT2).json()["edit_id"]  # an /edit after an import: its own record
        assert client.get(f"/edits/{made}").json()["computed"] == "at edit"


def test_an_import_sent_again_repeats_what_landed_and_writes_the_rest(settings):
    with serving(settings) as client:
        first = client.post("/edits/import", json={"items": ITEMS[:2]}).json()  # then the client "crashed"
        again = client.post("/edits/import", json={"items": ITEMS + [EDIT]}).json()
        assert [i["status"] for i in again["items"]] == ["repeated", "repeated", "imported", "repeated"]
        assert [i["edit_id"] for i in again["items"][:2]] == [i["edit_id"] for i in first["items"]]
        assert again["items"][3]["edit_id"] == again["items"][0]["edit_id"]
        assert again["version"] == 3 and client.get("/edits").json()["count"] == 3
        keyed = client.post("/edits/import", json={"items": [{**EDIT, "key": "kb-1"}, {**EDIT2, "key": "kb-1"}]})
        assert [i["status"] for i in keyed.json()["items"]] == ["imported", "invalid"]
        assert "used for another edit" in keyed.json()["items"][1]["error"]


def test_bad_items_are_reported_and_the_rest_imported(settings):
    with serving(settings) as client:
        long = {"prompt": "word " * 2000, "target": "x"}
        out = client.post("/edits/import", json={"items": [EDIT, long, EDIT3]}).json()
        assert [i["status"] for i in out["items"]] == ["imported", "invalid", "imported"]
        assert "longer than" in out["items"][1]["error"]
        assert client.post("/edits/import", json={"items": []}).status_code == 422
        assert client.post("/edits/import", json={"items": [{"prompt": "x"}]}).status_code == 422


def test_imported_edits_roll_back_replay_and_reach_another_replica(settings, tmp_path):
    server = EmbeddedRedis(tmp_path / "shared-redis").start()
    try:
        a = settings.model_copy(update={"redis_url": server.url})
        b = a.model_copy(update={"data_dir": tmp_path / "b"})
        with serving(a) as client, serving(b) as other:
            log = client.app.state.runtime.log
            real = log.append_many

            def append_many(events, after):  # another replica's edit lands between the keys and the write
                log.append_many = real
                assert other.post("/edit", json=EDIT3).status_code == 201
                return real(events, after)

            log.append_many = append_many
            out = client.post("/edits/import", json={"items": ITEMS}).json()
            assert [i["status"] for i in out["items"]] == ["imported"] * 3 and out["version"] == 4
            ids = [i["edit_id"] for i in out["items"]]
            before = replies(client)
            assert client.post("/rollback", json={"edit_id": ids[0]}).status_code == 200
            after = replies(client)
            assert after[0] != before[0] and after[1:] == before[1:]
            wait_for_version(other, 5)
            assert replies(other) == after
        with serving(a.model_copy(update={"snapshot_every": 0})) as client:  # a restart replaying the log
            assert replies(client) == after and client.get("/edits").json()["count"] == 4
    finally:
        server.stop()


def test_an_in_place_server_refuses_an_import_with_what_to_do(inplace):
    with serving(inplace) as client:
        r = client.post("/edits/import", json={"items": ITEMS})
        assert r.status_code == 409 and "/edit" in r.json()["detail"]
        assert client.get("/edits").json()["count"] == 0


def test_mend_import_sends_a_file_in_batches_and_goes_on_after_a_failure(settings, tmp_path):
    from typer.testing import CliRunner

    from service.cli import app

    lines = tmp_path / "kb.jsonl"
    lines.write_text("\n".join(json.dumps(e) for e in ITEMS) + "\n")
    zsre = tmp_path / "zsre.json"  # the data sets' own format: src -> alt
    zsre.write_text(json.dumps([{"subject": "Mount Fuji", "src": "Which country is Mount Fuji in?", "alt": "Peru",
                                 "answers": ["Japan"], "rephrase": "Where is Mount Fuji?", "loc": "", "loc_ans": ""}]))
    with http_serving(settings) as (_, url):
        run = CliRunner().invoke
        first = run(app, ["import", str(lines), "--url", url, "--batch", "2", "--n", "2", "--no-progress"])
        assert first.exit_code == 0, first.output
        assert "2 imported, 0 repeated" in first.output
        report = tmp_path / "report.jsonl"
        again = run(app, ["import", str(lines), "--url", url, "--batch", "2", "--report", str(report),
                          "--no-progress"])
        assert again.exit_code == 0 and "1 imported, 2 repeated" in again.output
        outcomes = [json.loads(line) for line in report.read_text().splitlines()]
        assert [(o["index"], o["status"]) for o in outcomes] == [(0, "repeated"), (1, "repeated"), (2, "imported")]
        assert run(app, ["import", str(zsre), "--url", url, "--no-progress"]).exit_code == 0
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(EDIT) + "\n{\"prompt\": \"no target\"}\n")
        refused = run(app, ["import", str(bad), "--url", url, "--no-progress"])
        assert refused.exit_code == 2 and "bad.jsonl:2" in refused.output
        with MendClient(url) as mend:
            assert mend.list_edits(limit=10).count == 4
            assert mend.generate(ITEMS[2]["prompt"], max_new_tokens=4).text.startswith(" fifty")
