"""Fixtures for the library tests: the real SmolLM2 tokenizer, a tiny random Llama and GPT-2 built from configs,
a saved model folder, and small data files in the zsRE and CounterFact formats. Helpers live in editor_support."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from editor_support import COUNTERFACT, ZSRE, build_gpt2, build_llama

from editor_core.model import load_tokenizer, prepare_model, resolve_model_path

torch.set_num_threads(1)  # two cores shared with a training job: OpenMP spinning makes tiny matmuls far slower


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(resolve_model_path("smollm2"))


@pytest.fixture(scope="session")
def _models(tokenizer) -> dict:
    return {"llama": build_llama(tokenizer), "gpt2": build_gpt2(tokenizer)}


def _guarded(model):
    """Lend a session model and put its weights back afterwards: a test that edits cannot leak into the next."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    yield model
    model.load_state_dict(saved)
    prepare_model(model)


@pytest.fixture(params=["llama", "gpt2"])
def model(request, _models):
    """A test taking `model` runs on both architectures (GPT-2's Conv1D weights are stored (in, out))."""
    yield from _guarded(_models[request.param])


@pytest.fixture()
def llama(_models):
    yield from _guarded(_models["llama"])


@pytest.fixture()
def gpt2(_models):
    yield from _guarded(_models["gpt2"])


@pytest.fixture(scope="session")
def data_files(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("data")
    paths = {"zsre": out / "zsre.json", "counterfact": out / "counterfact.json"}
    paths["zsre"].write_text(json.dumps(ZSRE))
    paths["counterfact"].write_text(json.dumps(COUNTERFACT))
    return paths


@pytest.fixture(scope="session")
def llama_dir(tokenizer, tmp_path_factory) -> Path:
    """The tiny Llama saved like any Hugging Face model folder, for the code paths that load by path."""
    out = tmp_path_factory.mktemp("tiny-llama")
    build_llama(tokenizer).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
