"""Helpers the service tests share (fixtures live in conftest.py)."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from transformers import LlamaForCausalLM

from editor_core import MENDEditor, prepare_model
from editor_core.model import load_tokenizer
from editor_core.scope import Scope, ScopeConfig
from service.client import MendClient
from service.main import create_app
from service.settings import Settings

# Untrained MEND is a plain gradient step of size alpha (its normalisation is the identity before training);
# on the tiny model 10 makes a one-token target the teacher-forced argmax, so an edit visibly changes outputs.
TINY_ALPHA = 10.0


def save_editor(model_dir: Path, out: Path, **kw) -> Path:
    """An untrained editor for the model in model_dir (kw overrides MENDConfig fields)."""
    model = prepare_model(LlamaForCausalLM.from_pretrained(model_dir))
    MENDEditor.for_model(model, **{"rank": 8, "init_alpha": TINY_ALPHA, **kw}).save(out)
    return out


# The tiny random model's keys are not meaningful, so the radius is 0.999: a prompt selects a scoped edit only when
# it is (nearly) the edit's own prompt.
SCOPE_PROMPTS = ["Paris is a city in", "The sun rises in the", "My favourite food is", "Dogs like to"]


def fit_scope(model_dir: Path, editor_dir: Path) -> Path:
    """Save a scope (what MEND_METHOD=scoped, the default, needs) beside the editor in editor_dir."""
    model = prepare_model(LlamaForCausalLM.from_pretrained(model_dir))
    layers = MENDEditor.load(editor_dir, model).layers
    cfg = ScopeConfig(key_block=0, window=8, radius=0.999)
    Scope.fit(model, load_tokenizer(model_dir), layers, SCOPE_PROMPTS, cfg).save(editor_dir)
    return editor_dir


# The tiny editor's alpha=10 edits rewrite every canary answer of the random model (measured: 100 of 100), which is
# what makes them visible in /generate; the mechanics tests therefore run the guard with a limit of 1.0 (it
# measures and records, never refuses). test_guard.py sets real limits.
GUARD_OFF = 1.0


def make_settings(model_dir: Path, editor_dir: Path, data_dir: Path, **kw) -> Settings:
    # Explicit values for everything the environment could set, so a developer's MEND_* variables do not leak in;
    # the method is the product's default (scoped), which tests run unless they are about the other.
    base = {"model": str(model_dir), "editor": editor_dir, "data_dir": data_dir, "threads": 1, "redis_url": None,
            "api_key": None, "guard_max_changed": GUARD_OFF,
            "method": Settings.model_fields["method"].default}
    return Settings(**{**base, **kw})


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[TestClient]:
    """The app with its lifespan run (model loaded, log replayed), spoken to over httpx."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@contextlib.contextmanager
def http_serving(settings: Settings) -> Iterator[tuple[FastAPI, str]]:
    """The app behind a real uvicorn on a free loopback port, for clients that need a URL (openai's): the app and
    its base URL."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start (see the log above)"
        time.sleep(0.05)
    try:
        yield app, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def client_serving(settings: Settings, **kw) -> Iterator[tuple[FastAPI, MendClient]]:
    """The app behind a real uvicorn, spoken to by the project's own client (kw: MendClient's options)."""
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    with http_serving(settings) as (app, url), MendClient(url, api_key=key, **kw) as client:
        yield app, client


def weights_hash(client: TestClient) -> str:
    return client.get("/ready").json()["weights"]


def edited_weights(client: TestClient) -> dict[str, torch.Tensor]:
    rt = client.app.state.runtime
    params = dict(rt.model.named_parameters())
    return {n: params[n].detach().clone() for n in rt.layer_names}


EDIT = {"prompt": "The capital of France is", "target": "Rome"}
EDIT2 = {"prompt": "The largest planet is", "target": "Mars"}
EDIT3 = {"prompt": "Water boils at", "target": "fifty"}
