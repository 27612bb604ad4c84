"""GET /health, /ready, /metrics and the OpenAPI document (routes/health.py, metrics.py, schemas.py)."""
from __future__ import annotations

import re

from service_support import EDIT

from service.settings import Settings


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] and ready["version"] == 0 and ready["active_edits"] == 0
    assert ready["log_key"] == f"mend:log:{client.app.state.runtime.log_fp}"


def test_metrics_count_edits_rollbacks_latency_and_log(client):
    eid = client.post("/edit", json=EDIT).json()["edit_id"]
    client.post("/rollback", json={"edit_id": eid})
    client.post("/rollback", json={"edit_id": eid})  # 409: counted as a response, not as a rollback
    text = client.get("/metrics").text
    for line in ("mend_edits_total 1.0", "mend_rollbacks_total 1.0", "mend_active_edits 0.0", "mend_log_events 2.0",
                 'mend_request_seconds_count{endpoint="/edit",method="POST"} 1.0',
                 'mend_responses_total{endpoint="/rollback",method="POST",status="409"} 1.0'):
        assert line in text, line


def test_openapi_has_an_example_for_every_request(client):
    doc = client.get("/openapi.json").json()
    bodies = [op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
              for ops in doc["paths"].values() for op in ops.values() if "requestBody" in op]
    assert sorted(bodies) == ["ChatCompletionRequest", "CompletionRequest", "EditCreate", "EditImport",
                              "GenerateRequest", "RollbackRequest", "ScoreRequest"]
    assert all(doc["components"]["schemas"][b]["examples"] for b in bodies)
    assert "space" in doc["info"]["description"]  # how prompt and target are joined
    assert client.get("/docs").status_code == 200


def test_the_interactive_docs_need_no_internet(client):
    """/docs and /redoc load their scripts and styles from this server (the installed package), not a CDN."""
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn." not in html and "https://" not in html.split("<body")[1] if "<body" in html else True
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/") for a in assets), assets
        for asset in assets:
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 100, asset


def test_examples_are_valid_requests(client):
    doc = client.get("/openapi.json").json()["components"]["schemas"]
    for example in doc["GenerateRequest"]["examples"]:
        assert client.post("/generate", json={**example, "max_new_tokens": 2}).status_code == 200
    for example in doc["ScoreRequest"]["examples"]:
        assert client.post("/score", json=example).status_code == 200
    for example in doc["EditCreate"]["examples"]:
        assert client.post("/edit", json=example).status_code == (200 if example.get("dry_run") else 201)
    assert client.post("/rollback", json=doc["RollbackRequest"]["examples"][1]).status_code == 200
    for name, path in (("CompletionRequest", "/v1/completions"), ("ChatCompletionRequest", "/v1/chat/completions")):
        for example in doc[name]["examples"]:  # for the default model; this test serves a tiny one
            assert example["model"] == Settings.model_fields["model"].default
            served = {**example, "model": client.app.state.settings.model, "max_tokens": 2}
            assert client.post(path, json=served).status_code == 200
