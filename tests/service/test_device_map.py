"""MEND_DEVICE_MAP / MEND_MAX_MEMORY: the model placed by accelerate (transformers' device_map) instead of `.to()`.

This machine has one CPU and no GPU, so what runs here is: "auto" (all on the CPU), an explicit per-module map
that offloads a module the editor does not edit to disk (accelerate's hooks then wrap every block and reload that
module at each forward: the hooked path an edit and a generation go through on a multi-GPU split), the refusal of
maps that offload an edited layer, and the settings' validation. The split across GPUs itself is not run here.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from service_support import EDIT, edited_weights, make_settings, serving
from transformers import AutoModelForCausalLM

from editor_core import load_base_model, model_fingerprint
from editor_core.model import load_tokenizer
from service.settings import Settings

# The tiny model's modules (tests/service/conftest.py): three blocks, all three MLPs edited by the tiny editor.
MODULES = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2", "model.norm",
           "model.rotary_emb", "lm_head"]
ON_CPU = {m: "cpu" for m in MODULES}
# Modules the editor does not edit, one of them inside an edited block, offloaded: allowed, and accelerate's hooks go
# on every module (an offloaded one's weights are meta tensors, reloaded from the checkpoint at each forward).
SOME_ON_DISK = {**{m: d for m, d in ON_CPU.items() if m != "model.layers.0"}, "model.layers.0.self_attn": "disk",
                "model.layers.0.mlp": "cpu", "model.layers.0.input_layernorm": "cpu",
                "model.layers.0.post_attention_layernorm": "cpu", "model.norm": "disk"}


def served(settings: Settings) -> dict:
    """What a user and a replica see of one edit on a fresh log: scores, replies before and after, weights."""
    gen = {"prompt": EDIT["prompt"], "max_new_tokens": 6}
    with serving(settings) as client:
        rt = client.app.state.runtime
        before = client.post("/generate", json=gen).json()["text"]
        r = client.post("/edit", json=EDIT)
        assert r.status_code == 201, r.text
        after = client.post("/generate", json=gen)
        assert after.status_code == 200, after.text
        weights = hashlib.sha256(b"".join(w.float().numpy().tobytes() for w in edited_weights(client).values()))
        return {"fingerprint": client.get("/ready").json()["model_fingerprint"], "scores": r.json()["scores"],
                "rank": r.json()["rank"],
                "before": before, "after": after.json()["text"], "weights": weights.hexdigest(),
                "placement": dict(getattr(rt.model, "hf_device_map", {}) or {})}


@pytest.mark.parametrize("method", ["scoped", "inplace"])
@pytest.mark.parametrize("device_map", ["auto", json.dumps(SOME_ON_DISK)], ids=["auto", "explicit-json"])
def test_a_mapped_model_serves_what_the_unmapped_one_does(tiny_model_dir, tiny_editor_dir, tmp_path: Path,
                                                          method, device_map):
    plain = served(make_settings(tiny_model_dir, tiny_editor_dir, tmp_path / "plain", method=method))
    assert plain["after"] != plain["before"]  # the edit shows, so equal replies below say something
    mapped = served(make_settings(tiny_model_dir, tiny_editor_dir, tmp_path / "mapped", method=method,
                                  device_map=device_map))
    if device_map != "auto":  # accelerate did place it (an all-CPU "auto" is left unhooked by transformers)
        assert mapped["placement"] == SOME_ON_DISK
    assert {k: v for k, v in mapped.items() if k != "placement"} == \
        {k: v for k, v in plain.items() if k != "placement"}


def test_bfloat16_with_a_device_map_starts_with_the_float32_fingerprint(settings, tiny_model_dir):
    fp = model_fingerprint(load_base_model(str(tiny_model_dir))[0])
    mapped = make_settings(tiny_model_dir, settings.editor, settings.data_dir, dtype="bfloat16",
                           device_map=SOME_ON_DISK)
    with serving(mapped) as client:
        rt = client.app.state.runtime
        assert rt.model.dtype == torch.bfloat16 and rt.model_fp == fp and rt.model.hf_device_map == SOME_ON_DISK
        assert rt.model.get_parameter(rt.layer_names[0]).dtype == torch.bfloat16
        assert client.post("/edit", json=EDIT).status_code == 201
        r = client.post("/generate", json={"prompt": EDIT["prompt"], "max_new_tokens": 4})
        assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["completion_tokens"] > 0


def test_a_map_that_offloads_an_edited_layer_is_refused(settings, tiny_model_dir):
    mapped = make_settings(tiny_model_dir, settings.editor, settings.data_dir,
                           device_map={**ON_CPU, "model.layers.2": "disk"})
    with pytest.raises(ValueError, match=r"the edited layers must be on a device, not offloaded: "
                                         r"\['model\.layers\.2\.mlp\.gate_proj\.weight'"):
        with serving(mapped):
            pass


def test_auto_with_too_little_memory_offloads_and_is_refused(settings, tiny_model_dir):
    # Room for the embedding (which the tied head shares) and about one block: accelerate sends the rest to disk.
    model = load_base_model(str(tiny_model_dir))[0]
    block = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    cap = model.model.embed_tokens.weight.numel() * 4 + 2 * block
    mapped = make_settings(tiny_model_dir, settings.editor, settings.data_dir, device_map="auto",
                           max_memory={"cpu": cap})
    with pytest.raises(ValueError, match=r"the edited layers must be on a device, not offloaded: .*'disk'"):
        with serving(mapped):
            pass


@pytest.mark.parametrize(("env", "message"), [
    ({"MEND_DEVICE_MAP": '{"model": "cpu"'}, "MEND_DEVICE_MAP is not valid JSON"),
    ({"MEND_DEVICE_MAP": "everywhere"}, "MEND_DEVICE_MAP must be one of auto, balanced"),
    ({"MEND_DEVICE_MAP": '{"model.layers": "gpu1"}'}, "puts 'model.layers' on 'gpu1', which is not a device"),
    ({"MEND_DEVICE_MAP": "auto", "MEND_DEVICE": "cuda:0"}, "MEND_DEVICE and MEND_DEVICE_MAP both set"),
    ({"MEND_MAX_MEMORY": '{"cpu": "1GiB"}'}, "set MEND_DEVICE_MAP"),
    ({"MEND_DEVICE_MAP": "auto", "MEND_MAX_MEMORY": "{cpu: 1GiB}"}, "MEND_MAX_MEMORY is not valid JSON"),
])
def test_bad_placement_settings_are_refused_clearly(monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match=message):
        Settings()


@pytest.mark.parametrize(("value", "parsed"), [
    ("auto", "auto"), (" sequential ", "sequential"),
    ('{"model": 0, "lm_head": "cpu"}', {"model": 0, "lm_head": "cpu"}),
])
def test_placement_settings_from_the_environment(monkeypatch, value, parsed):
    monkeypatch.setenv("MEND_DEVICE_MAP", value)
    monkeypatch.setenv("MEND_MAX_MEMORY", '{"0": "70GiB", "cpu": "100GiB"}')
    s = Settings()
    assert s.device_map == parsed and s.max_memory == {"0": "70GiB", "cpu": "100GiB"}


def test_a_map_that_offloads_the_input_embedding_is_refused(settings, tiny_model_dir):
    # Every request's tokens go to model.device, the embedding's: offloaded, that is the meta device.
    mapped = make_settings(tiny_model_dir, settings.editor, settings.data_dir,
                           device_map={**ON_CPU, "model.embed_tokens": "disk", "lm_head": "disk"})
    with pytest.raises(ValueError, match=r"the device map offloads the input embedding \(.*'model\.embed_tokens': "
                                         r"'disk'"):
        with serving(mapped):
            pass


def test_merged_export_of_a_model_with_an_offloaded_module(tiny_model_dir, tiny_editor_dir, tmp_path: Path):
    # The merged checkpoint must hold the offloaded modules' real weights, not the meta placeholders the model holds.
    mapped = make_settings(tiny_model_dir, tiny_editor_dir, tmp_path / "data", method="inplace",
                           device_map=SOME_ON_DISK)
    tok = load_tokenizer(tiny_model_dir)
    ids = tok(EDIT["prompt"], return_tensors="pt")["input_ids"]
    with serving(mapped) as client:
        assert client.post("/edit", json=EDIT).status_code == 201
        with torch.no_grad():
            served = client.app.state.runtime.model(input_ids=ids).logits
        r = client.get("/export", params={"format": "merged"})
        assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        z.extractall(tmp_path / "out")
        (top,) = {n.split("/")[0] for n in z.namelist()}
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / top)
    with torch.no_grad():
        assert torch.equal(merged(input_ids=ids).logits, served)
