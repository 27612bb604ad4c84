"""Requests generated from the app's own OpenAPI schema (schemathesis), valid and invalid: none gets a 5xx.

Bounded (a few examples per operation, derandomized) so that it takes seconds and draws the same requests every
run. A smoke test, not a proof: the inputs of issue 13 are pinned one by one in test_validation.py."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans

from service.main import create_app

EXAMPLES = 7  # per operation and mode: (9 operations valid + 5 invalid) x 7 = 98 requests


@pytest.fixture()
def schema(settings):
    app = create_app(settings.model_copy(update={"max_prompt_tokens": 32, "max_new_tokens": 4,
                                                 "guard_canaries": 5}))
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        # Schemathesis runs the app's lifespan (model, editor, embedded Redis) on its first request and keeps it
        # for the whole process: end it with the test.
        shutdown_lifespans()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_5xx(schema, mode):
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/edit", "/generate", "/rollback", "/score", "/edits/{edit_id}"}
    for op in operations:
        if mode is GenerationMode.NEGATIVE and not (op.body or op.query):
            continue  # no invalid request exists: no input (/health, /ready, /metrics) or any string (/edits/{id})

        @given(case=op.as_strategy(generation_mode=mode))
        @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            r = case.call()
            assert r.status_code < 500, (case.method, case.path, case.body, r.status_code, r.text[:300])

        check()
