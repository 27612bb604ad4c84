"""The committed default editor (weights/smollm2) on the real SmolLM2: it installs a new fact, for the prompt and
a rephrase, and it was trained for exactly this base model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from editor_core import (
    EditRequest,
    MENDEditor,
    load_base_model,
    model_fingerprint,
    restore,
    score_targets,
    snapshot,
)

WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "smollm2"


@pytest.fixture(scope="module")
def smollm():
    return load_base_model()


@pytest.mark.smollm
def test_committed_editor_installs_a_fact_for_prompt_and_rephrase(smollm):
    model, tok = smollm
    editor = MENDEditor.load(WEIGHTS, model)
    asked = [EditRequest("The Eiffel Tower is located in the city of", "Rome"),
             EditRequest("The Eiffel Tower can be found in the city of", "Rome")]
    before = score_targets(model, tok, asked)
    base = snapshot(model, editor.cfg.layers)
    editor.compute_delta(model, tok, asked[:1]).apply(model)
    try:
        after = score_targets(model, tok, asked)
    finally:
        restore(model, base)  # bit-exact, unlike revert: the next test fingerprints this model
    assert not any(s.exact for s in before)
    assert all(s.exact for s in after), after  # the new answer is the greedy one, for the rephrase too
    # measured: log P("Rome") -5.17 -> -0.00 on the prompt, -3.76 -> -0.00 on the rephrase
    assert all(a.logprob > -0.1 > -3 > b.logprob for a, b in zip(after, before))


@pytest.mark.smollm
def test_committed_editor_matches_its_manifest_and_the_model(smollm):
    model, _ = smollm
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    editor = MENDEditor.load(WEIGHTS, model)
    assert editor.cfg.model_fingerprint == manifest["base_model_fingerprint"] == model_fingerprint(model)
    assert (WEIGHTS / "editor.safetensors").stat().st_size < 64 * 2**20


@pytest.mark.smollm
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_committed_editor_accepts_the_model_served_in_half_precision(dtype):
    # MEND_DTYPE=bfloat16 once refused to start: the editor names the float32 model, the bf16 weights hashed apart.
    model, _ = load_base_model(dtype=dtype)
    editor = MENDEditor.load(WEIGHTS, model)
    assert editor.cfg.model_fingerprint == model_fingerprint(model)
