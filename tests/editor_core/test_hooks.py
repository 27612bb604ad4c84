"""Hooks act only for the thread that opened them, and remove their handles on exit."""
from __future__ import annotations

import threading

import pytest
import torch
from editor_support import REQS

from editor_core.data import tokenize_edits
from editor_core.hooks import CaptureBlockInput, CaptureLayers


def _forward(model, batch):
    with torch.enable_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_capture_ignores_forwards_of_other_threads(llama, tokenizer):
    mlp, block = llama.model.layers[3].mlp.down_proj, llama.model.layers[1]
    mine, theirs = (tokenize_edits(tokenizer, [r]) for r in REQS)
    seen = {}
    with CaptureLayers({"down": mlp}, grad_from=block) as cap:
        t = threading.Thread(target=lambda: seen.update(logits=_forward(llama, theirs)))
        t.start()
        t.join()
        assert cap.inputs == {} and cap.outputs == {}  # the other thread's forward was not recorded
        assert not seen["logits"].requires_grad  # nor made differentiable
        logits = _forward(llama, mine)
    assert cap.inputs["down"].shape[1] == mine["input_ids"].shape[1]  # control: the caller's forward is captured
    assert logits.requires_grad


def test_handles_removed_on_exit_even_after_an_error(llama):
    mlp, block = llama.model.layers[3].mlp.down_proj, llama.model.layers[1]
    with pytest.raises(RuntimeError), CaptureLayers({"down": mlp}, grad_from=block):
        assert mlp._forward_hooks and block._forward_pre_hooks
        raise RuntimeError("boom")
    assert not mlp._forward_hooks and not block._forward_pre_hooks


def test_another_threads_forward_during_a_registration_passes_through(llama):
    # torch stores a with_kwargs pre-hook, then flags it as taking kwargs: a forward in another thread between the
    # two calls it without kwargs. That was a TypeError (a 500) in a generation racing an edit's key capture.
    block, x = llama.model.layers[1], torch.zeros(1, 2, llama.config.hidden_size)
    with CaptureLayers({}, grad_from=block) as cap, CaptureBlockInput(block) as keep:
        out = {}
        t = threading.Thread(target=lambda: out.update(leaf=cap._leaf(block, (x,)), keep=keep._keep(block, (x,))))
        t.start()
        t.join()
    assert out == {"leaf": None, "keep": None} and keep.hidden is None
