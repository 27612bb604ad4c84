"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, an untrained editor for it, and apps
on a real embedded Redis in a fresh folder per test."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from service_support import fit_scope, make_settings, save_editor, serving
from transformers import LlamaConfig, LlamaForCausalLM

from editor_core.model import load_tokenizer, resolve_model_path
from service.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    # Two cores shared with whatever else runs here: OpenMP spinning across two threads makes tiny matmuls ~100x slower.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = load_tokenizer(resolve_model_path("smollm2"))
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_editor_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained editor with a fitted scope: serves either method, the default (scoped) included."""
    return fit_scope(tiny_model_dir, save_editor(tiny_model_dir, tmp_path_factory.mktemp("tiny-editor")))


@pytest.fixture()
def settings(tiny_model_dir: Path, tiny_editor_dir: Path, tmp_path: Path) -> Settings:
    """The product's default method (scoped)."""
    return make_settings(tiny_model_dir, tiny_editor_dir, tmp_path / "data")


@pytest.fixture()
def inplace(settings: Settings) -> Settings:
    return settings.model_copy(update={"method": "inplace"})


@pytest.fixture(params=["scoped", "inplace"])
def either(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """Each method in turn, for the mechanics both share (log, replay, replicas, outages, locking)."""
    return settings.model_copy(update={"method": request.param})


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with serving(settings) as c:
        yield c
