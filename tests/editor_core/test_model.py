"""Base-model loading and fingerprints; one edit on the real default model."""
from __future__ import annotations

import threading

import pytest
import torch
from editor_support import identity_editor

from editor_core.data import EditRequest
from editor_core.model import DTYPES, load_base_model, model_fingerprint, resolve_model_path
from editor_core.scoring import score_targets


def test_loads_a_folder_frozen_in_eval_mode_with_right_padding(llama_dir):
    model, tok = load_base_model(str(llama_dir))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tok.pad_token is not None and tok.padding_side == "right"
    assert next(model.parameters()).dtype == torch.float32


def test_half_precision_and_bad_dtype(llama_dir):
    model, _ = load_base_model(str(llama_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model_fingerprint(model)  # bf16 weights hash too
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_base_model(str(llama_dir), dtype="int8")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_vocabulary_projection_gets_a_contiguous_input(llama_dir, dtype, monkeypatch):
    """transformers slices the hidden states for `logits_to_keep`; in bf16 a sliced multi-row input sent torch's CPU
    matmul down a path that copies the whole output embedding again and again (8x slower prefills on SmolLM2)."""
    import editor_core.projection as projection

    model, tok = load_base_model(str(llama_dir), dtype=dtype)
    seen, project = [], projection.project
    monkeypatch.setattr(projection, "project", lambda head, hidden: seen.append(hidden.is_contiguous()) or
                        project(head, hidden))
    enc = tok(["a b c d e f", "a b"], return_tensors="pt", padding=True)
    full = model(**enc).logits[:, -1]
    kept = model(**enc, logits_to_keep=1).logits[:, -1]
    assert seen == [True, True]
    torch.testing.assert_close(kept, full)


def test_fingerprint_stable_across_loads_and_sensitive_to_one_weight(llama_dir):
    a, _ = load_base_model(str(llama_dir))
    b, _ = load_base_model(str(llama_dir))
    assert model_fingerprint(a) == model_fingerprint(b)
    w = b.model.layers[3].mlp.down_proj.weight
    with torch.no_grad():
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))  # one ulp
    assert model_fingerprint(a) != model_fingerprint(b)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_load_has_its_checkpoints_float32_fingerprint(llama_dir, tokenizer, tmp_path, dtype):
    # An editor and an edit log name the float32 model; serving it in half precision must not make it another.
    full, _ = load_base_model(str(llama_dir))
    half, _ = load_base_model(str(llama_dir), dtype=dtype)
    assert next(half.parameters()).dtype == DTYPES[dtype]
    assert model_fingerprint(half) == model_fingerprint(full)
    # Another checkpoint whose half-precision weights are the same bits: still another model.
    w = full.model.layers[3].mlp.down_proj.weight
    with torch.no_grad():
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))
    full.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    other, _ = load_base_model(str(tmp_path), dtype=dtype)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), half.state_dict().values()))
    assert model_fingerprint(other) == model_fingerprint(full) != model_fingerprint(half)
    # Once its weights change, a half-precision model no longer claims the checkpoint's identity.
    before = model_fingerprint(half)
    with torch.no_grad():
        half.model.layers[3].mlp.down_proj.weight[0, 0] += 1
    assert model_fingerprint(half) != before


def test_non_gguf_names_pass_through():
    assert resolve_model_path("/some/hf/folder") == "/some/hf/folder"
    assert resolve_model_path("org/model-id") == "org/model-id"


@pytest.mark.smollm
def test_smollm2_one_identity_edit_raises_the_target():
    model, tok = load_base_model()
    again, _ = load_base_model()
    assert model_fingerprint(model) == model_fingerprint(again)  # the cached conversion is stable
    del again
    req = EditRequest("The capital of France is", "Rome")
    before = score_targets(model, tok, [req])[0].logprob
    editor = identity_editor(model, init_alpha=1e-2)  # untrained: plain gradient descent with a clear step
    assert [l.block for l in editor.layers] == [27] * 3 + [28] * 3 + [29] * 3
    editor.compute_delta(model, tok, [req]).apply(model)
    after = score_targets(model, tok, [req])[0].logprob
    assert after > before + 3.0, (before, after)  # measured: -7.6 -> -0.7 nats


def test_the_tokenizer_can_be_shared_by_threads(tokenizer):
    # A server tokenizes a /generate prompt in one thread while an /edit pads a batch in another. Unserialised,
    # transformers' per-call padding settings leak between the two (about 3% of these calls failed with "Unable
    # to create tensor"), which reached a client as a 500 in the reliability bench.
    batch, single = ["What is the capital of France?", "Who"], "Danielle Darrieux's mother tongue is " * 4
    want_batch = tokenizer(batch, padding=True, return_tensors="pt")["input_ids"]
    want_single = tokenizer(single)["input_ids"]
    errors, wrong = [], []

    def work(pads: bool) -> None:
        for _ in range(150):
            try:
                if pads:
                    got = tokenizer(batch, padding=True, return_tensors="pt")["input_ids"]
                    wrong.extend([] if torch.equal(got, want_batch) else ["batch"])
                else:
                    wrong.extend([] if tokenizer(single)["input_ids"] == want_single else ["single"])
                    tokenizer.decode(want_single)
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and wrong == []
