"""Continuous batching (batching.py): rows decoded together say, token for token, what each says alone."""
from __future__ import annotations

import pytest
import torch

from editor_core import EditRequest, MENDEditor
from editor_core.batching import Batch, Row, complete, stream_tokens
from editor_core.scope import CHAT, PLAIN, Ask, Scope, ScopeConfig

# Different lengths, so that the batch pads; the first two are edited below.
PROMPTS = ["The capital of France is", "Who wrote the novel Dracula? The answer is", "Hi",
           "Once upon a time, in a land far away, there lived a"]
EDITS = [EditRequest(PROMPTS[0], "Rome"), EditRequest(PROMPTS[1], "Jane Austen")]
GENERIC = ["Paris is a city in", "The sun rises in the", "My favourite food is", "Dogs like to"]


def ids(tok, text: str) -> list[int]:
    return tok(text)["input_ids"]


def run(batch: Batch, joins: dict[int, list[Row]]) -> dict[int, list[str]]:
    """Rows join at the steps given (before that step's forward); decode until every row is done. Returns the
    pieces each row streamed, by id."""
    rows = [r for rs in joins.values() for r in rs]
    pieces = {id(r): [] for r in rows}
    step = 0
    while any(r.done is None for r in rows):
        batch.join(joins.get(step, []))  # together: one prefill, left-padded
        batch.step()
        for r in rows:
            pieces[id(r)] += r.take()
        step += 1
    return pieces


def alone(model, tok, row: Row, scope: Scope | None = None, ask: Ask | None = None) -> tuple[list[int], str]:
    """The tokens and text of a row like `row` (made before it ran), decoded in a batch of its own."""
    twin = Row(row.ids, row.max_new_tokens, row.temperature, row.top_p, row.seed, row.stop, ask)
    batch = Batch(model, tok, scope)
    batch.join([twin])
    while twin.done is None:
        batch.step()
    return twin.new, twin.done.text


@pytest.fixture()
def scope(model, tokenizer):
    """Both edits stored as scoped edits; each one's step doubled until its own prompt gives its target, so that
    generation says the target and the selection releases the edit mid-reply."""
    editor = MENDEditor.for_model(model, rank=8, init_alpha=1.0).eval()
    s = Scope.fit(model, tokenizer, editor.layers, GENERIC, ScopeConfig(key_block=0, window=8, radius=0.999,
                                                                          max_scale=4096.0))
    for i, e in enumerate(EDITS):
        s.add(f"e{i}", s.scoped(model, tokenizer, editor.compute_deltas(model, tokenizer, [e]), [e]))
    s.attach(model)
    yield s
    s.detach()


def test_rows_joining_at_different_steps_say_what_they_say_alone(model, tokenizer):
    rows = [Row(ids(tokenizer, p), n) for p, n in zip(PROMPTS, (12, 5, 9, 14))]
    streamed = run(Batch(model, tokenizer), {0: rows[:1], 2: rows[1:3], 4: rows[3:]})
    for r in rows:
        new, text = alone(model, tokenizer, r)
        assert r.new == new and r.done.text == text == "".join(streamed[id(r)])
        assert r.done.tokens == r.max_new_tokens and r.done.finish_reason == "length"


def test_a_seed_gives_the_same_text_alone_or_in_a_batch(model, tokenizer):
    rows = [Row(ids(tokenizer, p), 10, temperature=1.2, top_p=tp, seed=s)
            for p, tp, s in zip(PROMPTS, (0.9, 1.0, 0.5, 0.95), (1, 2, 3, 4))]
    run(Batch(model, tokenizer), {0: rows[:2], 1: rows[2:3], 3: rows[3:]})
    for r in rows:
        assert r.new == alone(model, tokenizer, r)[0]
    reseeded = Row(rows[0].ids, 10, temperature=1.2, top_p=0.9, seed=99)
    assert alone(model, tokenizer, reseeded)[0] != rows[0].new  # the seed is what makes it the same


def test_stop_strings_end_their_own_row_only(model, tokenizer):
    free = [Row(ids(tokenizer, p), 10) for p in PROMPTS]
    run(Batch(model, tokenizer), {0: free})
    # the first two rows stop at what their own greedy reply says at its third token; the others have no stop
    cut = [Row(r.ids, 10, stop=[tokenizer.decode(r.new[2:3])]) for r in free[:2]] + [Row(r.ids, 10) for r in free[2:]]
    streamed = run(Batch(model, tokenizer), {0: cut[:1], 1: cut[1:]})
    for r, f in zip(cut, free):
        assert r.done.text == alone(model, tokenizer, r)[1] == "".join(streamed[id(r)])
        assert f.done.text.startswith(r.done.text)
    assert [r.done.finish_reason for r in cut] == ["stop", "stop", "length", "length"]
    assert all(len(r.done.text) < len(f.done.text) for r, f in zip(cut[:2], free))


def test_each_row_carries_its_own_scoped_edit_until_it_is_released(model, tokenizer, scope):
    asks = [Ask(p, PLAIN, scope.codebook) for p in PROMPTS]
    rows = [Row(ids(tokenizer, p), 10, ask=a) for p, a in zip(PROMPTS, asks)]
    singles = [alone(model, tokenizer, r, scope, a) for r, a in zip(rows, asks)]
    # the first edited row keyed inside a padded prefill (row 3 is longer), the second keyed first (two sentences)
    run(Batch(model, tokenizer, scope), {0: [rows[3], rows[0]], 2: rows[1:3]})
    for r, (new, text) in zip(rows, singles):
        assert r.new == new and r.done.text == text
    for r, e in zip(rows[:2], EDITS):
        assert r.done.text.startswith(" " + e.target) and r.edit.selection.released  # said, and released
        said = len(tokenizer(" " + e.target, add_special_tokens=False)["input_ids"])
        # after the release the row is the unedited model continuing the text so far
        rest = complete(model, tokenizer, r.ids + r.new[:said], 10 - said)
        assert r.done.text == tokenizer.decode(r.new[:said]) + rest.text
    assert [r.edit and r.edit.selection.edit_ids for r in rows] == [["e0"], ["e1"], None, None]
    unedited = complete(model, tokenizer, rows[0].ids, 10)
    assert not unedited.text.startswith(" " + EDITS[0].target)  # the edit is what said it


def test_a_prompt_keyed_on_its_way_selects_and_says_what_keying_it_first_does(model, tokenizer, scope):
    """A plain one-sentence prompt is keyed inside its own prefill (at the key block, below every edited layer):
    the same edit, and the same logits, as keying it first and then running the prefill with that edit."""
    for p in PROMPTS:
        ask, prompt = Ask(p, PLAIN, scope.codebook), ids(tokenizer, p)
        assert scope.keyed_on_the_way(tokenizer, ask, prompt) == ("?" not in p)  # one sentence, or two
        first = scope.choose(model, tokenizer, [(p, PLAIN)])[0]
        with torch.no_grad(), scope.acting(scope.stacked([first and first.piece])):
            expected = model(input_ids=torch.tensor([prompt])).logits
        with torch.no_grad(), scope.choosing(model, tokenizer, [ask], [prompt], torch.ones(1, len(prompt))) as chosen:
            fused = model(input_ids=torch.tensor([prompt])).logits
        assert (chosen[0] and chosen[0].selection.edit_ids) == (first and first.selection.edit_ids)
        assert torch.allclose(fused, expected, atol=1e-5)
    # a chat prompt or one of several sentences is keyed first, as a request of its own
    two = "It is a long story. " + PROMPTS[0]
    for ask, prompt in ((Ask(PROMPTS[0], CHAT, scope.codebook), ids(tokenizer, "User: " + PROMPTS[0])),
                        (Ask(two, PLAIN, scope.codebook), ids(tokenizer, two))):
        assert not scope.keyed_on_the_way(tokenizer, ask, prompt)
        with torch.no_grad(), scope.choosing(model, tokenizer, [ask], [prompt], torch.ones(1, len(prompt))) as chosen:
            model(input_ids=torch.tensor([prompt]))
        assert chosen[0].selection.edit_ids == ["e0"]  # the question, found after a preamble or in chat form


def test_a_cancelled_row_leaves_and_the_others_go_on(model, tokenizer):
    rows = [Row(ids(tokenizer, p), 8) for p in PROMPTS]
    batch = Batch(model, tokenizer)
    batch.join(rows)
    batch.step()
    rows[1].cancelled = True
    while batch.rows:
        batch.step()
    assert rows[1].done is None and len(rows[1].new) == 2
    for r in rows[:1] + rows[2:]:
        assert r.new == alone(model, tokenizer, r)[0]


def test_stream_tokens_yields_pieces_that_add_up_to_the_completion(model, tokenizer):
    tokens = stream_tokens(model, tokenizer, ids(tokenizer, PROMPTS[3]), 12, temperature=0.8, seed=5)
    pieces = []
    while True:
        try:
            pieces.append(next(tokens))
        except StopIteration as end:
            done = end.value
            break
    assert len(pieces) > 1 and "".join(pieces) == done.text
    assert done == complete(model, tokenizer, ids(tokenizer, PROMPTS[3]), 12, temperature=0.8, seed=5)


def test_zero_new_tokens_is_an_empty_reply(model, tokenizer):
    assert complete(model, tokenizer, ids(tokenizer, "Hi"), 0).text == ""


def test_the_stacked_hook_adds_each_rows_delta_as_the_weights_would(model, tokenizer, scope):
    """Row b of a batch gets exactly what adding its own delta to the weights gives: a batch of two edited rows
    and one plain row against each row alone with its delta applied in place."""
    pieces = [c.piece for c in scope.choose(model, tokenizer, [(p, PLAIN) for p in PROMPTS[:2]])] + [None]
    enc = tokenizer(PROMPTS[:2] + ["Hi"], return_tensors="pt", padding=True)
    with torch.no_grad(), scope.acting(scope.stacked(pieces)):
        batched = model(**enc).logits
    for b, piece in enumerate(pieces):
        n = int(enc["attention_mask"][b].sum())
        if piece is not None:
            piece.apply(model)
        try:
            with torch.no_grad():
                own = model(input_ids=enc["input_ids"][b: b + 1, :n]).logits[0]
        finally:
            if piece is not None:
                piece.revert(model)
        assert torch.allclose(batched[b, :n], own, atol=1e-4)
