"""The frozen-prefix cache: skipping the blocks below the first edited one changes nothing in the logits."""
from __future__ import annotations

import threading

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


def test_a_skip_acts_only_in_the_thread_that_opened_it(llama, tokenizer):
    """The service checks an edit's candidates with the prefix skipped while other threads generate through the
    same blocks: their forwards must run whole, also while a second thread opens and closes a skip of its own."""
    batch = tokenize_edits(tokenizer, REQS)
    other = tokenize_edits(tokenizer, [EditRequest("Something else entirely", "yes")])
    expected, expected_other = _logits(llama, batch), _logits(llama, other)
    cache, cache_b = PrefixCache(llama, first_block=2), PrefixCache(llama, first_block=1)
    opened, checked = threading.Event(), threading.Event()
    seen = {}

    def elsewhere():
        seen["whole"] = _logits(llama, other)  # while the main thread skips
        with cache_b.skipping(other):
            opened.set()
            checked.wait(10)
            seen["own_skip"] = _logits(llama, other)

    with cache.skipping(batch):
        worker = threading.Thread(target=elsewhere)
        worker.start()
        opened.wait(10)
        seen["main"] = _logits(llama, batch)  # the other thread's skip is open meanwhile
        checked.set()
        worker.join(10)
        again = _logits(llama, batch)  # and closed again
    assert torch.equal(seen["whole"], expected_other)
    torch.testing.assert_close(_real(seen["own_skip"], other), _real(expected_other, other), rtol=1e-5, atol=1e-5)
    assert torch.equal(_real(seen["main"], batch), _real(expected, batch))
    assert torch.equal(_real(again, batch), _real(expected, batch))
    _, blocks = find_blocks(llama)
    assert all("forward" not in b.__dict__ for b in blocks)
    assert torch.equal(_logits(llama, other), expected_other)


def test_a_forward_set_on_a_block_before_a_skip_is_kept(llama, tokenizer):
    """accelerate's device hooks replace a block's forward on the instance: a skip must hand it back."""
    _, blocks = find_blocks(llama)
    calls = []
    own = blocks[0].forward

    def counted(*args, **kwargs):
        calls.append(1)
        return own(*args, **kwargs)

    blocks[0].forward = counted
    try:
        batch = tokenize_edits(tokenizer, REQS)
        with PrefixCache(llama, first_block=2).skipping(batch):
            n = len(calls)  # the cache's own forward to block 2 ran block 0 through `counted`
            _logits(llama, batch)
            assert len(calls) == n  # skipped
        assert blocks[0].__dict__["forward"] is counted
        _logits(llama, batch)
        assert len(calls) == n + 1
    finally:
        del blocks[0].forward
