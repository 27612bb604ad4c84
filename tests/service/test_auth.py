"""Bearer auth: with MEND_API_KEY set, every route but the probes and the docs needs the key (main.py, deps.py);
without a key the server only starts on a loopback address (settings.py)."""
from __future__ import annotations

import re

import pytest
from pydantic import SecretStr, ValidationError
from service_support import EDIT, EDIT2, EDIT3, serving

try:  # FastAPI 0.16x keeps an included router as one entry of app.routes; this walks into it
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI copies the routes into app.routes
    def iter_route_contexts(routes):
        return routes

from service.settings import Settings

KEY = "s3cret-key"
GOOD = {"Authorization": f"Bearer {KEY}"}
BAD = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}]
UNAUTHORIZED = {"detail": "missing or invalid API key: send 'Authorization: Bearer <key>'"}
OPENAI_UNAUTHORIZED = {"error": {"message": UNAUTHORIZED["detail"], "type": "invalid_request_error", "param": None,
                                 "code": "invalid_api_key"}}  # the OpenAI-compatible routes answer in OpenAI's shape
PROBES = {"/health", "/ready"}
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}  # the API's description, no data
# The web console's files, no data: the page asks for the key and sends it on its calls (test_console.py)
CONSOLE = {"/console", "/console/console.js", "/console/console.css"}


def served(client) -> list[tuple[str, str]]:
    """Every (method, path) the app answers, read from the app itself so a new route cannot be left out."""
    routes = list(iter_route_contexts(client.app.routes))
    # The one mount is /docs' and /redoc's own scripts and styles (no data; the docs pages load them keyless).
    assert [r.path for r in routes if r.methods is None] == ["/static-offline-docs"]
    return [(method, route.path) for route in routes if route.methods for method in sorted(route.methods - {"HEAD"})]


def url(path: str, edit_id: str = "0" * 32) -> str:
    return re.sub(r"\{[^}]+\}", edit_id, path)


def assert_only_open(client, open_paths: set[str]) -> None:
    for method, path in served(client):
        for headers in BAD:
            r = client.request(method, url(path), headers=headers)
            if path in open_paths:
                assert r.status_code == 200, (method, path, r.text)
            else:
                expected = OPENAI_UNAUTHORIZED if path.startswith("/v1/") else UNAUTHORIZED
                assert (r.status_code, r.json()) == (401, expected), (method, path, headers)
                assert r.headers["www-authenticate"] == "Bearer"


@pytest.fixture()
def keyed(settings):
    with serving(settings.model_copy(update={"api_key": SecretStr(KEY)})) as client:
        yield client


def test_with_a_key_every_route_but_the_probes_and_the_docs_needs_it_and_works_with_it(keyed):
    assert_only_open(keyed, PROBES | DOCS | CONSOLE)
    assert keyed.app.state.runtime.version == 0  # nothing refused reached the log

    edit_id, model = keyed.post("/edit", json=EDIT, headers=GOOD).json()["edit_id"], keyed.app.state.settings.model
    calls = {("POST", "/edit"): {"json": EDIT2}, ("POST", "/rollback"): {"json": {"edit_id": edit_id}},
             ("POST", "/generate"): {"json": {"prompt": "hi", "max_new_tokens": 2}},
             ("POST", "/score"): {"json": {"items": [EDIT]}}, ("POST", "/edits/import"): {"json": {"items": [EDIT3]}},
             ("GET", "/edits"): {}, ("GET", "/edits/{edit_id}"): {}, ("GET", "/metrics"): {},
             ("GET", "/export"): {"params": {"format": "peft"}},
             ("GET", "/v1/models"): {},
             ("POST", "/v1/completions"): {"json": {"model": model, "prompt": "hi", "max_tokens": 2}},
             ("POST", "/v1/chat/completions"): {"json": {"model": model, "stream": True, "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "hi"}]}}}
    for method, path in served(keyed):
        if path in PROBES | DOCS | CONSOLE:
            continue
        assert (method, path) in calls, f"{method} {path}: a new route; add a call here"
        r = keyed.request(method, url(path, edit_id), headers=GOOD, **calls[method, path])
        assert r.status_code in (200, 201), (method, path, r.text)


def test_metrics_public_opens_metrics_and_nothing_else(settings):
    with serving(settings.model_copy(update={"api_key": SecretStr(KEY), "metrics_public": True})) as client:
        assert_only_open(client, PROBES | DOCS | CONSOLE | {"/metrics"})


def test_blank_key_means_no_auth(monkeypatch, settings):
    # docker-compose passes MEND_API_KEY="" when the operator sets none.
    monkeypatch.setenv("MEND_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_a_non_loopback_host_without_a_key_is_refused(host):
    with pytest.raises(ValidationError, match=f"refusing to serve on {re.escape(host)} without an API key"):
        Settings(host=host, api_key=None, allow_no_key=False)
    assert Settings(host=host, api_key=KEY, allow_no_key=False).host == host


def test_allow_no_key_lets_a_public_host_start_without_a_key(monkeypatch):
    monkeypatch.setenv("MEND_ALLOW_NO_KEY", "true")
    assert Settings(host="0.0.0.0", api_key=None).host == "0.0.0.0"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_a_loopback_host_needs_no_key(host):
    assert Settings(host=host, api_key=None, allow_no_key=False).host == host


def test_an_app_started_around_the_cli_refuses_non_loopback_connections_without_a_key(settings):
    """`uvicorn service.main:create_app --factory --host 0.0.0.0` skips `mend serve`'s check of the bind address:
    each request is checked by the address it came in on. A connection to a loopback address is served."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    assert settings.api_key is None and not settings.allow_no_key
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as local:
        assert local.post("/generate", json={"prompt": "hi", "max_new_tokens": 1}).status_code == 200
        for base in ("http://10.1.2.3:8000", "http://[2001:db8::1]:8000"):
            remote = TestClient(local.app, base_url=base)
            n = local.get("/edits").json()["count"]
            for method, path, body in [("post", "/edit", EDIT), ("get", "/edits", None), ("get", "/health", None)]:
                r = getattr(remote, method)(path, **({"json": body} if body else {}))
                assert r.status_code == 403 and "non-loopback" in r.json()["detail"], (path, r.text)
            assert local.get("/edits").json()["count"] == n
        assert TestClient(local.app, base_url="http://[::ffff:127.0.0.1]:8000").get("/health").status_code == 200
    keyed = settings.model_copy(update={"api_key": SecretStr(KEY)})
    with TestClient(create_app(keyed), base_url="http://10.1.2.3:8000") as remote:
        assert remote.get("/edits", headers=GOOD).status_code == 200
