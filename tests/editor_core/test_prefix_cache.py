"""The frozen-prefix cache: skipping the blocks below the first edited one changes nothing in the logits."""
from __future__ import annotations

import torch
from editor_support import REQS

from editor_core.data import EditRequest, tokenize_edits
from editor_core.layers import find_blocks
from editor_core.prefix_cache import PrefixCache


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _real(logits, batch) -> torch.Tensor:
    return logits[batch["attention_mask"].bool()]  # pad positions are free to differ (zeros are cached there)


def test_skipping_the_prefix_gives_the_full_forward_exactly(model, tokenizer):
    batch = tokenize_edits(tokenizer, REQS)
    full = _logits(model, batch)
    cache = PrefixCache(model, first_block=2)
    with cache.skipping(batch):
        skipped = _logits(model, batch)
    assert torch.equal(_real(skipped, batch), _real(full, batch))
    assert (cache.hits, cache.misses) == (0, 2)
    with cache.skipping(batch):  # now served from the store
        again = _logits(model, batch)
    assert torch.equal(_real(again, batch), _real(full, batch))
    assert (cache.hits, cache.misses) == (2, 2)


def test_cached_rows_serve_a_batch_of_another_shape(llama, tokenizer):
    cache = PrefixCache(llama, first_block=1)
    with cache.skipping(tokenize_edits(tokenizer, REQS)):
        pass
    batch = tokenize_edits(tokenizer, [REQS[1], EditRequest("A new prompt", "here"), REQS[0]])
    with cache.skipping(batch):
        skipped = _logits(llama, batch)
    assert (cache.hits, cache.misses) == (2, 3)
    torch.testing.assert_close(_real(skipped, batch), _real(_logits(llama, batch), batch), rtol=1e-5, atol=1e-5)


def test_blocks_are_restored_after_skipping(llama, tokenizer):
    other = tokenize_edits(tokenizer, [EditRequest("Something else entirely", "yes")])
    expected = _logits(llama, other)
    cache = PrefixCache(llama, first_block=2)
    with cache.skipping(tokenize_edits(tokenizer, REQS)):
        pass
    # A left-over swap would feed this other input the cached hidden states of REQS (or skip blocks 0-1).
    _, blocks = find_blocks(llama)
    assert not blocks[2]._forward_pre_hooks
    assert torch.equal(_logits(llama, other), expected)
