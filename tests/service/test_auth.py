"""Bearer auth (deps.py): /edit and /rollback need the key when MEND_API_KEY is set; /generate only if configured."""
from __future__ import annotations

import pytest
from pydantic import SecretStr
from service_support import EDIT, serving

KEY = "s3cret-key"
GOOD = {"Authorization": f"Bearer {KEY}"}
UNAUTHORIZED = {"detail": "missing or invalid API key: send 'Authorization: Bearer <key>'"}


@pytest.fixture()
def keyed(settings):
    with serving(settings.model_copy(update={"api_key": SecretStr(KEY)})) as client:
        yield client


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}])
def test_writes_need_the_key(keyed, headers):
    for path, body in (("/edit", EDIT), ("/rollback", {"to_version": 0})):
        r = keyed.post(path, json=body, headers=headers)
        assert r.status_code == 401 and r.json() == UNAUTHORIZED and r.headers["www-authenticate"] == "Bearer"
    assert keyed.app.state.runtime.version == 0


def test_the_key_opens_writes_and_generate_stays_open(keyed):
    eid = keyed.post("/edit", json=EDIT, headers=GOOD).json()["edit_id"]
    assert keyed.post("/rollback", json={"edit_id": eid}, headers=GOOD).status_code == 200
    assert keyed.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).status_code == 200
    assert keyed.get("/edits").status_code == 200


def test_generate_can_require_the_key(settings):
    with serving(settings.model_copy(update={"api_key": SecretStr(KEY), "generate_auth": True})) as client:
        assert client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).status_code == 401
        assert client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}, headers=GOOD).status_code == 200


def test_blank_key_means_no_auth(monkeypatch, settings):
    # docker-compose passes MEND_API_KEY="" when the operator sets none.
    monkeypatch.setenv("MEND_API_KEY", "")
    from service.settings import Settings
    assert Settings().api_key is None
