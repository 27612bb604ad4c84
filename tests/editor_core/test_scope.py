"""Scoped edits (scope.py): keys, selection, the hooks that add a selected delta, and its storage in the delta."""
from __future__ import annotations

import json
import threading

import pytest
import torch
from editor_support import REQS

from editor_core import LowRankDelta, MENDEditor
from editor_core.data import EditRequest, tokenize_edits
from editor_core.gradients import token_factors
from editor_core.scope import ANSWER_SLACK, PLAIN, Ask, Scope, ScopeConfig, Selection, fit_words

PROMPTS = ["Paris is a city in", "The sun rises in the", "My favourite food is", "Dogs like to"]


def logits(model, tok, reqs):
    b = tokenize_edits(tok, reqs)
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


@pytest.fixture()
def setup(model, tokenizer):
    editor = MENDEditor.for_model(model, rank=8, init_alpha=1.0).eval()
    scope = Scope.fit(model, tokenizer, editor.layers, PROMPTS, ScopeConfig(key_block=0, window=8, radius=0.999))
    delta = scope.scoped(model, tokenizer, editor.compute_deltas(model, tokenizer, REQS[:1]), REQS[:1])
    scope.attach(model)
    yield model, tokenizer, scope, delta
    scope.detach()


def test_keys_are_unit_and_independent_of_padding(setup):
    model, tok, scope, _ = setup
    alone = scope.prompt_keys(model, tok, [PROMPTS[0]])
    padded = scope.prompt_keys(model, tok, [PROMPTS[0], "a much longer prompt than the first one, with padding"])
    assert torch.allclose(alone.norm(dim=-1), torch.ones(1))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_the_delta_adds_only_on_rows_that_select_it(setup):
    model, tok, scope, delta = setup
    reqs = [REQS[0], REQS[1]]  # the edit's own prompt, and another one
    before = logits(model, tok, reqs)
    scope.add("e1", delta)
    with scope.applying_to(model, tok, [r.prompt for r in reqs]) as chosen:
        after = logits(model, tok, reqs)
    assert chosen.edit_ids == ["e1", None]
    assert torch.equal(after[1], before[1]) and not torch.allclose(after[0], before[0])
    # the same change as adding the (scaled) delta to the weights, for the row that selected it
    delta.apply(model)
    try:
        alone = logits(model, tok, reqs[:1])[0]  # right padding: the batch's row 0 starts with the same tokens
        assert torch.allclose(alone, after[0][: len(alone)], atol=1e-4)
    finally:
        delta.revert(model)


def test_outside_the_context_and_in_other_threads_nothing_is_added(setup):
    model, tok, scope, delta = setup
    scope.add("e1", delta)
    plain = logits(model, tok, REQS[:1])
    seen = {}
    with scope.applying_to(model, tok, [REQS[0].prompt]):
        t = threading.Thread(target=lambda: seen.update(x=logits(model, tok, REQS[:1])))
        t.start()
        t.join()
    assert torch.equal(seen["x"], plain)
    assert torch.equal(logits(model, tok, REQS[:1]), plain)


def test_select_takes_the_nearest_key_within_the_radius_and_the_newest_on_ties(setup):
    model, tok, scope, delta = setup
    scope.cfg.radius = 0.5
    keys = scope.prompt_keys(model, tok, PROMPTS[:2])
    older = LowRankDelta(delta.factors, key=keys[:1])
    newer = LowRankDelta(delta.factors, key=keys[:1])
    other = LowRankDelta(delta.factors, key=keys[1:2])
    for i, d in (("old", older), ("new", newer), ("other", other)):
        scope.add(i, d)
    assert scope.select(keys) == ["new", "other"]
    assert scope.select(-keys) == [None, None]  # cosine -1
    scope.remove("new")
    assert scope.select(keys) == ["old", "other"]
    scope.clear()
    assert scope.select(keys) == [None, None]


def test_an_edits_radius_rises_above_its_nearest_bank_question(model, tokenizer, tmp_path):
    editor = MENDEditor.for_model(model, rank=8, init_alpha=1.0).eval()
    scope = Scope.fit(model, tokenizer, editor.layers, PROMPTS, ScopeConfig(key_block=0, radius=0.2, bank_margin=0.01))
    edit = [EditRequest(PROMPTS[0], " Europe")]
    own, near, far = scope.prompt_keys(model, tokenizer, [PROMPTS[0], PROMPTS[1], PROMPTS[2]])
    scope.cfg.radius = float(own @ near) - 0.05  # the scope's radius alone covers the other question
    plain = scope.scoped(model, tokenizer, editor.compute_deltas(model, tokenizer, edit), edit)
    assert "radii" not in plain.meta  # no bank: the scope's radius
    fingerprint = scope.fingerprint()
    scope.with_bank(model, tokenizer, [PROMPTS[1], PROMPTS[1]])  # another question, which the edit must not cover
    assert scope.bank.shape[0] == 1 and torch.allclose(scope.bank[0], near, atol=1e-3)  # one row per question
    banked = scope.scoped(model, tokenizer, editor.compute_deltas(model, tokenizer, edit), edit)
    (radius,) = json.loads(banked.meta["radii"])
    assert radius == pytest.approx(float(own @ scope.bank[0]) + 0.01, abs=1e-5)
    assert scope.fingerprint() == fingerprint  # the log keeps each edit's radius: replay is unaffected
    for name, delta in (("plain", plain), ("banked", banked)):
        scope.add(name, delta)
    # The banked edit: its own prompt, not the bank's question; the plain one (no radii, as older logs) takes that.
    probes = torch.stack([own, near, far])
    sim_far = float(own @ far)
    assert scope.select(probes)[:2] == ["banked", "plain"]
    assert scope.select(probes)[2] == ("banked" if sim_far >= radius else "plain" if sim_far >= scope.cfg.radius
                                       else None)
    scope.remove("plain")
    assert scope.select(probes)[1] is None
    scope.save(tmp_path)
    again = Scope.load(tmp_path, scope.layers)
    assert torch.allclose(again.bank, scope.bank, atol=1e-3) and again.fingerprint() == fingerprint


def test_an_edit_of_a_bank_question_is_not_kept_away_from_its_own_prompt(model, tokenizer):
    """The bank holds training questions; a user may edit one of them. Its own row is the same question, not another
    one: the edit's radius comes from the other rows, and its own prompt selects it."""
    editor = MENDEditor.for_model(model, rank=8, init_alpha=1.0).eval()
    scope = Scope.fit(model, tokenizer, editor.layers, PROMPTS, ScopeConfig(key_block=0, radius=0.2, bank_margin=0.01))
    scope.with_bank(model, tokenizer, PROMPTS[:2])
    edit = [EditRequest(PROMPTS[0], " Europe")]
    delta = scope.scoped(model, tokenizer, editor.compute_deltas(model, tokenizer, edit), edit)
    own, other = scope.prompt_keys(model, tokenizer, PROMPTS[:2])
    (radius,) = json.loads(delta.meta["radii"])
    assert radius == pytest.approx(max(float(own @ other) + 0.01, 0.2), abs=1e-3) and radius < 1
    scope.add("e1", delta)
    assert scope.select(own[None]) == ["e1"]


def test_the_key_travels_with_the_delta_and_a_scope_survives_save_and_load(setup, tmp_path):
    model, tok, scope, delta = setup
    back = LowRankDelta.from_bytes(delta.compressed(0.03, torch.float16).to_bytes())
    assert back.key is not None and torch.equal(back.key, delta.key)
    assert LowRankDelta.from_bytes(LowRankDelta(delta.factors).to_bytes()).key is None
    scope.save(tmp_path)
    again = Scope.load(tmp_path, scope.layers)
    assert again.fingerprint() == scope.fingerprint()
    assert torch.equal(again.prompt_keys(model, tok, PROMPTS), scope.prompt_keys(model, tok, PROMPTS))


def test_a_scoped_delta_without_a_key_is_refused(setup):
    _, _, scope, delta = setup
    with pytest.raises(ValueError, match="key"):
        scope.add("e", LowRankDelta(delta.factors))


def test_keys_computed_in_one_thread_leave_other_threads_forwards_whole(setup):
    model, tok, scope, _ = setup
    full = logits(model, tok, REQS[:1])
    main, seen = threading.get_ident(), {}

    def other_thread():
        try:
            seen["logits"] = logits(model, tok, REQS[:1])
        except BaseException as e:  # noqa: BLE001 - the key computation's stop would land here
            seen["error"] = e

    def interleave(*_a, **_k):  # while the main thread computes keys, another runs a whole forward
        if threading.get_ident() == main and not seen:
            t = threading.Thread(target=other_thread)
            t.start()
            t.join()

    from editor_core.layers import find_blocks
    handle = find_blocks(model)[1][0].register_forward_pre_hook(interleave)
    try:
        scope.prompt_keys(model, tok, ["A prompt whose key was never computed"])
    finally:
        handle.remove()
    assert "error" not in seen and torch.equal(seen["logits"], full)


def test_a_prompts_key_is_computed_once_and_is_the_key_computed_alone(setup):
    """/edit keys its prompt for the score before, the edit and the score after: one forward, not three."""
    model, tok, scope, _ = setup
    prompts = ["Who wrote the letter to the editor?", "Which river runs through the old town?"]
    alone = [scope.prompt_keys(model, tok, [p]) for p in prompts]
    forwards = []
    from editor_core.layers import find_blocks
    handle = find_blocks(model)[1][0].register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        both = scope.prompt_keys(model, tok, prompts + [prompts[0]])
    finally:
        handle.remove()
    assert forwards == []
    assert torch.equal(both, torch.cat(alone + alone[:1]))


def test_the_step_doubles_until_the_edit_takes_up_to_max_scale(model, tokenizer):
    from editor_core.scoring import score_targets

    editor = MENDEditor.for_model(model, rank=8, init_alpha=1e-4).eval()  # far too small a step to take at 1x
    base = editor.compute_deltas(model, tokenizer, REQS[:1])
    fixed = Scope.fit(model, tokenizer, editor.layers, PROMPTS, ScopeConfig(key_block=0, radius=0.999))
    assert json.loads(fixed.scoped(model, tokenizer, base, REQS[:1]).meta["scope_scale"]) == [1.0]
    adaptive = Scope(ScopeConfig(key_block=0, radius=0.999, max_scale=2.0**30), fixed.layers, fixed.center)
    assert adaptive.fingerprint() == fixed.fingerprint()  # logged deltas carry their step: replay is unaffected
    delta = adaptive.scoped(model, tokenizer, base, REQS[:1])
    (step,) = json.loads(delta.meta["scope_scale"])
    assert 1 < step <= 2.0**30
    adaptive.add("e1", delta)
    adaptive.attach(model)
    try:
        with adaptive.applying_to(model, tokenizer, [REQS[0].prompt]):
            took = score_targets(model, tokenizer, REQS[:1])[0].exact
        assert took or step == 2.0**30
        if step > 1:  # and half the step did not take: the smallest power of two that does
            adaptive.remove("e1")
            half = LowRankDelta({n: (l / 2, r) for n, (l, r) in delta.factors.items()}, {}, delta.key)
            adaptive.add("e1", half)
            with adaptive.applying_to(model, tokenizer, [REQS[0].prompt]):
                assert not score_targets(model, tokenizer, REQS[:1])[0].exact
    finally:
        adaptive.detach()


def test_edits_sent_together_each_apply_only_their_own_delta(model, tokenizer):
    editor = MENDEditor.for_model(model, rank=8, init_alpha=1.0).eval()
    reqs = REQS[:2]
    pieces = editor.compute_deltas(model, tokenizer, reqs)
    # the pieces are the batch's one update (the editor applied to all its token rows), split by request
    whole = editor.transform(token_factors(model, editor.layers, tokenize_edits(tokenizer, reqs))[0])
    for name in whole.factors:
        torch.testing.assert_close(LowRankDelta.stack(pieces).dense(name), whole.dense(name))
    alone = editor.compute_deltas(model, tokenizer, reqs[1:])[0]  # and each is what its request alone gets
    for name in whole.factors:
        torch.testing.assert_close(pieces[1].dense(name), alone.dense(name), rtol=1e-4, atol=1e-6)
    scope = Scope.fit(model, tokenizer, editor.layers, PROMPTS, ScopeConfig(key_block=0, window=8, radius=0.999))
    delta = scope.scoped(model, tokenizer, pieces, reqs)
    restored = LowRankDelta.from_bytes(delta.to_bytes())  # as the log stores it
    scope.add("batch", restored)
    scope.attach(model)
    try:
        for i, req in enumerate(reqs):
            with scope.applying_to(model, tokenizer, [req.prompt]) as chosen:
                hooked = logits(model, tokenizer, [req])
            assert chosen.edit_ids == ["batch"]
            pieces[i].apply(model)
            try:
                torch.testing.assert_close(hooked, logits(model, tokenizer, [req]), rtol=1e-4, atol=1e-4)
            finally:
                pieces[i].revert(model)
        scope.remove("batch")
        assert scope.codebook.live == 0 and \
            scope.select(scope.prompt_keys(model, tokenizer, [reqs[0].prompt])) == [None]
    finally:
        scope.detach()


def test_a_delta_without_key_ranks_applies_whole_for_every_key(setup):
    model, tok, scope, delta = setup
    keys = scope.prompt_keys(model, tok, [REQS[0].prompt, REQS[1].prompt])
    old = LowRankDelta(delta.factors, {}, keys)  # a scoped log entry written before per-request pieces
    assert Scope.pieces(old) == [{"plain": old}, {"plain": old}]


def test_an_edit_that_misses_at_every_step_is_tuned_on_its_left_factors(model, tokenizer):
    """A piece that does not give its target at its largest step gets Adam steps on its left factors: its target's
    log-prob rises, its right factors (MEND's ũ) and rank stay, the pieces handed in are not touched, and a log
    replays the same whatever the tuning (it is not in the fingerprint)."""
    from editor_core.scoring import score_targets

    editor = MENDEditor.for_model(model, rank=8, init_alpha=1e-2).eval()  # too small a step to take
    pieces = editor.compute_deltas(model, tokenizer, REQS[:1])
    kept = {n: left.clone() for n, (left, _) in pieces[0].factors.items()}

    def scored(steps: int):
        scope = Scope.fit(model, tokenizer, editor.layers, PROMPTS,
                          ScopeConfig(key_block=0, radius=0.999, tune_steps=steps, tune_lr=1.0))
        delta = scope.scoped(model, tokenizer, pieces, REQS[:1])
        scope.add("e", delta)
        scope.attach(model)
        try:
            with scope.applying_to(model, tokenizer, [REQS[0].prompt]):
                return scope, delta, score_targets(model, tokenizer, REQS[:1])[0]
        finally:
            scope.detach()

    plain_scope, plain, before = scored(0)
    tuned_scope, tuned, after = scored(20)
    assert not before.exact and after.logprob > before.logprob + 0.1
    assert tuned_scope.fingerprint() == plain_scope.fingerprint()
    for name, (left, right) in tuned.factors.items():
        assert torch.equal(right, plain.factors[name][1]) and left.shape == plain.factors[name][0].shape
        assert not torch.equal(left, plain.factors[name][0])
        assert torch.equal(pieces[0].factors[name][0], kept[name])
    if model.config.model_type == "gpt2":  # this one is reached in 20 steps
        assert after.exact


def test_a_selection_releases_once_its_answer_is_said(setup):
    # A scoped delta left on after its answer keeps pushing that answer at every later token ("Rome Rome Rome"):
    # the decoding loop drops it once its selection is released (test_batching.py checks what follows).
    model, tok, scope, delta = setup
    restored = LowRankDelta.from_bytes(delta.to_bytes())  # the target travels in the logged delta
    scope.add("e1", restored)
    plain = logits(model, tok, REQS[:1])
    target = REQS[0].target
    choice, other = scope.choose(model, tok, [(REQS[0].prompt, PLAIN), (REQS[1].prompt, PLAIN)])
    assert other is None and choice.selection.edit_ids == ["e1"]
    with scope.acting(scope.stacked([choice.piece])):
        assert not torch.equal(logits(model, tok, REQS[:1]), plain)
    assert not choice.selection.observe(f" {target.strip()[:2]}")  # not yet said: still on
    assert not choice.selection.released
    assert choice.selection.observe(f"{target}, of course.") and choice.selection.released
    assert not choice.selection.observe(f"{target}, of course. And")  # released once
    assert [scope.codebook.target(r) for r in range(scope.codebook.n)] == [target]


def test_an_edit_logged_without_its_target_never_releases(setup):
    model, tok, scope, delta = setup
    old = LowRankDelta(delta.factors, {k: v for k, v in delta.meta.items() if k != "targets"}, delta.key)
    scope.add("old", old)
    plain = logits(model, tok, REQS[:1])
    choice = scope.choose(model, tok, [(REQS[0].prompt, PLAIN)])[0]
    assert not choice.selection.observe(REQS[0].target) and not choice.selection.released
    with scope.acting(scope.stacked([choice.piece])):
        assert not torch.equal(logits(model, tok, REQS[:1]), plain)


def test_a_selection_releases_an_answer_gone_wrong_but_not_a_preamble(setup):
    """A reply that began the answer and then left it ("Jane Austin", "Jane   ") or stalls ANSWER_SLACK tokens past
    its length has failed: the edit stops acting. On its way to the answer, or after a preamble that does not
    begin with it (chat), the edit stays on however long the reply runs."""
    _, _, scope, _ = setup
    target = "Jane Austen"

    def selection(tokens: int | None = 3) -> Selection:
        return Selection(["e"], [target], [tokens])

    right, wrong, spaces, stalled, preamble = selection(len(target)), *(selection() for _ in range(4))
    for i in range(1, len(target)):  # the answer a character (token) at a time: on its way, never released
        assert not right.observe(" " + target[:i]) and not right.released
    assert right.observe(f" {target}, the novelist")
    assert not wrong.observe(" Jane Aust") and wrong.observe(" Jane Austin")
    assert not spaces.observe(" Jane") and spaces.observe(" Jane   ")
    for _ in range(3 + ANSWER_SLACK):  # a token that adds no text (say, one that decodes to nothing)
        assert not stalled.observe(" Jane")
    assert stalled.observe(" Jane")
    for _ in range(50):
        assert not preamble.observe(" Well, the author of that novel is not Jane")
    assert preamble.observe(" Well, the author of that novel is Jane Austen")
    unknown = selection(None)  # without its length only leaving the answer releases it
    for _ in range(50):
        assert not unknown.observe(" Jane")


def test_a_strict_selection_releases_a_reply_that_is_no_longer_the_start_of_its_answer():
    """A plain prompt's piece is trained to begin the reply with the answer: once the reply is not the start of
    the answer ("Glanson" for "Gloria Swanson"), the edit has failed and is released, where the chat rule would
    keep it on until the answer's first word came."""
    target = "Gloria Swanson"
    strict, chat = (Selection(["e"], [target], [4], strict=s) for s in (True, False))
    for partial in (" Gl", " Glor", " Gloria", " Gloria Sw"):
        assert not strict.observe(partial) and not chat.observe(partial)
    strict, chat = (Selection(["e"], [target], [4], strict=s) for s in (True, False))
    assert not strict.observe(" Gl") and not chat.observe(" Gl")
    assert strict.observe(" Glanson") and not chat.observe(" Glanson")
    preamble = Selection(["e"], [target], [4], strict=True)
    assert preamble.observe(" The")  # a plain reply that does not begin with the answer never will
    said = Selection(["e"], [target], [4], strict=True)
    assert not said.observe(" \"") and said.observe(' "Gloria Swanson"')  # punctuation is not a departure


def test_a_whitening_projection_keys_prompts_and_travels_with_the_scope(setup, tmp_path):
    """Scope.proj is applied to the centred state before normalising, is saved and loaded with the centre, and
    is part of the fingerprint (keys stored under one projection mean nothing under another)."""
    model, tok, scope, _ = setup
    plain = scope.prompt_keys(model, tok, PROMPTS)
    d = scope.center.numel()
    torch.manual_seed(0)
    scope.proj = torch.eye(d) + 0.5 * torch.randn(d, d) / d ** 0.5
    keys = scope.prompt_keys(model, tok, PROMPTS)
    pooled = scope.pooled_prompts(model, tok, PROMPTS)
    expected = (pooled - scope.center) @ scope.proj.T
    assert torch.allclose(keys, expected / expected.norm(dim=-1, keepdim=True), atol=1e-5)
    assert not torch.allclose(keys, plain, atol=1e-3)
    scope.save(tmp_path)
    loaded = Scope.load(tmp_path, scope.layers)
    assert torch.equal(loaded.proj, scope.proj) and loaded.fingerprint() == scope.fingerprint()
    loaded.proj = None
    assert loaded.fingerprint() != scope.fingerprint()
    assert torch.allclose(loaded.prompt_keys(model, tok, PROMPTS), plain, atol=1e-6)


def test_edit_forms_end_the_targets_that_would_run_on_with_the_token_the_base_model_likes_best_after_them(
        model, tokenizer):
    """With end_words, an edit whose answer the unedited model would go on with in some form (its best token after
    prompt + target begins with a letter or a digit) gains, in every form, the token it likes best there among
    those that begin with neither; the others stay as they are. All forms in one padded forward, equal to each
    alone; without end_words the forms are `in_forms`'. The logged delta says which edits wait for the word."""
    from editor_core.data import join
    from editor_core.scope import forms_of, in_forms
    from editor_core.scope.compute import _word_tokens

    editor = MENDEditor.for_model(model, rank=8).eval()
    scope = Scope.fit(model, tokenizer, editor.layers, PROMPTS, ScopeConfig(key_block=0, end_words=True))
    reqs = list(REQS) + [EditRequest(p, "blue") for p in PROMPTS[:6]]
    ended = scope.edit_forms(model, tokenizer, reqs)
    plain = in_forms(tokenizer, reqs)
    n_forms = len(plain) // len(reqs)
    assert [r.prompt for r in ended] == [r.prompt for r in plain]
    ends, goes_on = _word_tokens(tokenizer)
    best, runs_on = [], []
    for base in plain:
        ids = tokenizer("".join(join(base.prompt, base.target)), return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
        k = min(len(ends), len(logits))
        best.append(tokenizer.decode([int(logits[:k].masked_fill(~ends[:k], float("-inf")).argmax())]))
        runs_on.append(bool(goes_on[int(logits[:k].argmax())]))
    extended = [any(runs_on[i * n_forms:(i + 1) * n_forms]) for i in range(len(reqs))]
    assert 0 < sum(extended) < len(reqs)  # both kinds are here
    for i, (req, base) in enumerate(zip(ended, plain)):
        assert req.target == (base.target + best[i] if extended[i // n_forms] else base.target)
    delta = scope.scoped(model, tokenizer, editor.compute_deltas(model, tokenizer, ended), ended,
                         [r.prompt for r in reqs], forms_of(tokenizer), answers=[r.target for r in reqs])
    assert json.loads(delta.meta["word_end"]) == [int(e) for e in extended]
    scope.add("e", delta)
    assert [scope.codebook.word_end(r) for r in range(scope.codebook.n)] == list(extended)
    scope.add("old", LowRankDelta(delta.factors, {**delta.meta, "word_end": "1"}, delta.key))  # logged before
    assert [scope.codebook.word_end(r) for r in range(len(reqs), scope.codebook.n)] == [True] * len(reqs)
    scope.cfg.end_words = False
    assert scope.edit_forms(model, tokenizer, reqs) == plain


def test_a_word_end_selection_is_released_only_once_the_answers_word_has_ended():
    """An edit trained to end its answer's word keeps acting on the token after the answer: " Oxford" is not yet
    said (it may become "Oxfordshire"), " Oxford." is."""
    ended, shipped = Selection(["e"], ["Oxford"], [1], strict=True, word_end=True), Selection(["e"], ["Oxford"], [1])
    assert not ended.observe(" Oxford") and shipped.observe(" Oxford")
    assert ended.observe(" Oxford.")
    run_on = Selection(["e"], ["Oxford"], [1], strict=True, word_end=True)
    assert not run_on.observe(" Oxford") and run_on.observe(" Oxfordshire")  # gone wrong: released all the same


def test_another_wording_that_selects_an_edit_gets_the_edit_made_for_its_words(setup):
    """`Scope.worded`: a request in other words than the edit's own that selects it gets a piece computed for its
    own wording (what applies, cached per wording); the edit's own wording, a prompt selecting nothing, and a row of
    another codebook in which the request selects some other edit keep the stored piece."""
    model, tok, scope, _ = setup
    scope.cfg.radius = -1.0  # every prompt selects the one stored edit
    editor = MENDEditor.for_model(model, rank=8, init_alpha=1.0).eval()
    delta = scope.compute(model, tok, editor, REQS[:1])
    scope.add("e1", delta)
    other = "Tell me this: the capital of France is"
    worded = scope.worded(model, tok, editor, other, PLAIN)
    assert worded is not None and (worded.edit_id, worded.row) == ("e1", 0)
    again = scope.worded(model, tok, editor, other, PLAIN)
    assert again.piece is worded.piece  # computed once per wording
    assert scope.worded(model, tok, editor, REQS[0].prompt, PLAIN) is None  # the edit's own words
    # MEND's delta of this wording: its right factors (ũ, which steps and tuning leave alone) are that delta's
    fresh = editor.compute_deltas(model, tok, [EditRequest(other, REQS[0].target)])[0]
    assert worded.piece.factors.keys() == fresh.factors.keys()
    for name, (_, right) in fresh.factors.items():
        assert torch.equal(worded.piece.factors[name][1], right)
        assert not torch.equal(right, Scope.pieces(delta)[0][PLAIN].factors[name][1])

    stored = scope.choose(model, tok, [(other, PLAIN)])[0].piece
    mine = scope._choice(tok, Ask(other, PLAIN, scope.codebook, worded),
                         scope.request_keys(model, tok, [other])[0]).piece
    assert mine is worded.piece and stored is not worded.piece
    # in a codebook where the request selects another edit, the piece made for e1 does not apply
    scope.add("e2", LowRankDelta(delta.factors, delta.meta, delta.key))
    newer = scope._choice(tok, Ask(other, PLAIN, scope.codebook, worded),
                          scope.request_keys(model, tok, [other])[0])
    assert newer.selection.edit_ids == ["e2"] and newer.piece is not worded.piece
    # teacher-forced scoring applies the same piece as generation
    with scope.applying_to(model, tok, [other], book=scope.codebook.without("e2"), worded=[worded]):
        tf = logits(model, tok, [EditRequest(other, REQS[0].target)])
    with scope.acting(scope.stacked([worded.piece])):
        assert torch.equal(tf, logits(model, tok, [EditRequest(other, REQS[0].target)]))
    scope.clear()
    assert scope.worded(model, tok, editor, other, PLAIN) is None  # nothing stored: nothing selected


def test_a_piece_that_is_not_finite_is_never_applied(setup, monkeypatch):
    model, tok, scope, _ = setup
    scope.cfg.radius = -1.0
    editor = MENDEditor.for_model(model, rank=8, init_alpha=1.0).eval()
    scope.add("e1", scope.compute(model, tok, editor, REQS[:1]))
    real = editor.compute_deltas

    def poisoned(*args, **kwargs):
        return [LowRankDelta({n: (left * float("nan"), right) for n, (left, right) in d.factors.items()})
                for d in real(*args, **kwargs)]

    monkeypatch.setattr(editor, "compute_deltas", poisoned)
    assert scope.worded(model, tok, editor, "Tell me this: the capital of France is", PLAIN) is None


def test_a_relation_check_reads_stored_keys_and_keeps_the_log_as_it_is(setup, tmp_path):
    """The relation check acts on the stored unit keys as the fitted projection acts on the centred states (the
    whitening undone: a cosine ignores scale), drops the selections whose relation keys differ, keeps the stored
    edits when it is set, travels with the scope, and leaves the fingerprint alone (a log replays under any
    check)."""
    model, tok, scope, delta = setup
    d = scope.center.numel()
    torch.manual_seed(0)
    scope.proj = torch.eye(d) + 0.5 * torch.randn(d, d) / d ** 0.5
    scope.cfg.radius = -1.0  # the key alone selects the edit for every prompt
    keys = scope.prompt_keys(model, tok, PROMPTS)
    scope.add("e1", LowRankDelta(delta.factors, key=keys[:1]))
    assert scope.select(keys) == ["e1"] * len(PROMPTS)
    fingerprint = scope.fingerprint()

    relation = torch.randn(3, d)
    scope.with_relation(relation, 0.5)
    centred = scope.pooled_prompts(model, tok, PROMPTS) - scope.center
    expected = centred @ relation.T
    expected = expected / expected.norm(dim=-1, keepdim=True)
    check = scope.codebook.relation
    assert torch.allclose(check.keys(keys), expected, atol=1e-4)
    cos = (expected @ expected[0]).tolist()
    assert any(c < 0.5 for c in cos)  # the random projection tells some prompt apart from the edit's
    assert scope.select(keys) == ["e1" if c >= 0.5 else None for c in cos]  # the edit, kept through with_relation
    assert scope.fingerprint() == fingerprint

    scope.add("e2", LowRankDelta(delta.factors, key=keys[1:2]))
    scope.remove("e1")  # relation keys stay aligned with the key rows left
    assert scope.select(keys[1:2]) == ["e2"]
    scope.save(tmp_path)
    again = Scope.load(tmp_path, scope.layers)
    assert torch.equal(again.relation, relation) and again.cfg.relation_radius == 0.5
    again.add("e1", LowRankDelta(delta.factors, key=keys[:1]))
    assert again.select(keys) == ["e1" if c >= 0.5 else None for c in cos]
    assert scope.with_relation(None, None).select(keys) == ["e2"] * len(PROMPTS)


def test_request_keys_pick_each_prompts_candidate_nearest_a_stored_key(setup):
    """Per prompt of a batch: its candidate (whole prompt or a sentence suffix) most similar to some stored key, the
    whole prompt when nothing is stored; a batch keys each prompt as it would be keyed alone."""
    model, tok, scope, _ = setup
    asked = ["It rains. The capital of France is", "Dogs like to. My favourite food is", PROMPTS[1]]
    whole = scope.prompt_keys(model, tok, asked)
    assert torch.equal(scope.request_keys(model, tok, asked, scope.codebook.cleared()), whole)

    stored = scope.prompt_keys(model, tok, ["The capital of France is", "My favourite food is"])
    book = scope.codebook.cleared().added("e", LowRankDelta({}, {}, stored))
    keys = scope.request_keys(model, tok, asked, book)
    cands, of = scope.candidate_keys(model, tok, asked)
    sim = (cands @ stored.T).max(1).values
    for b in range(len(asked)):
        rows = [j for j, o in enumerate(of) if o == b]
        assert torch.equal(keys[b], cands[max(rows, key=lambda j: (float(sim[j]), -j))])
    assert torch.equal(keys, torch.cat([scope.request_keys(model, tok, [a], book) for a in asked]))
    assert not torch.equal(keys[:2], whole[:2])  # a suffix nearer a stored key keys its prompt


def test_a_word_check_lets_a_prompt_naming_an_edits_rare_words_select_it(setup, tmp_path):
    """A prompt outside an edit's radius that names every rare word of the edit's question selects it from the word
    radius; one that misses a rare word, or names only common ones, does not. The words are read from the prompts
    logged with the edit (meta["prompts"]), so the check can be set under stored edits, travels with the scope,
    and leaves the fingerprint alone; an edit logged without its prompts is selected by its key alone."""
    model, tok, scope, delta = setup  # radius 0.999: the key alone selects the edit for its own prompt only
    assert json.loads(delta.meta["prompts"]) == [REQS[0].prompt]
    fingerprint = scope.fingerprint()
    scope.add("e1", delta)
    asked = ["Name the capital of France", "Name the capital of Spain", "The capital of the country is",
             REQS[0].prompt]
    keys = scope.prompt_keys(model, tok, asked)
    assert scope.select(keys, texts=asked) == [None, None, None, "e1"]

    common = fit_words(["The capital of Spain is", "The capital of Peru is", "The capital of Chad is"], 0.5)
    assert common == {"the", "capital", "of", "is"}
    scope.with_words(common, -1.0)  # any cosine, for a prompt naming all of "france"
    assert scope.codebook.rows.words_of == [frozenset({"france"})]
    assert scope.select(keys, texts=asked) == ["e1", None, None, "e1"]
    assert scope.select(keys) == [None, None, None, "e1"]  # no texts: keys alone
    with scope.applying_to(model, tok, asked[:2]) as chosen:
        assert chosen.edit_ids == ["e1", None]
    assert scope.fingerprint() == fingerprint

    scope.save(tmp_path)
    again = Scope.load(tmp_path, scope.layers)
    assert again.common == common and again.cfg.word_radius == -1.0
    again.add("e1", delta)
    again.add("old", LowRankDelta(delta.factors, {}, delta.key))  # logged before meta["prompts"]
    assert again.codebook.rows.words_of == [frozenset({"france"}), frozenset()]
    assert again.select(keys[:1], texts=asked[:1]) == ["e1"]
    again.remove("e1")
    assert again.select(keys, texts=asked) == [None, None, None, "old"]
    scope.with_words(None, None).save(tmp_path)
    assert not (tmp_path / "words.json").exists() and Scope.load(tmp_path, scope.layers).word_check() is None
    assert scope.select(keys, texts=asked) == [None, None, None, "e1"]


def test_fit_relation_separates_other_questions_about_a_subject_from_its_rephrases(llama, tokenizer):
    """On records whose other questions differ from the edit prompt in one way and whose rephrases in another, the
    fitted projection keeps the first and shrinks the second, and the radius keeps the rephrases."""
    from editor_core.data import EditRecord
    from editor_core.scope import RELATION_RADII, fit_relation

    editor = MENDEditor.for_model(llama, rank=8, init_alpha=1.0).eval()
    scope = Scope.fit(llama, tokenizer, editor.layers, PROMPTS, ScopeConfig(key_block=0, radius=-1.0))
    subjects = ["Paris", "Rome", "Oslo", "Cairo", "Lima", "Kyoto", "Perth", "Quito", "Accra", "Hanoi", "Dakar",
                "Minsk"]
    records = [EditRecord(EditRequest(f"{s} is a city in the country of", " X"),
                          [f"The country {s} is a city in is", f"In which country is the city of {s}?"], [], s,
                          extra={"other_questions": [f"The mayor of {s} is called", f"{s} has a population of"]})
               for s in subjects]
    relation, radius, report = fit_relation(scope, llama, tokenizer, records, k=4)
    assert relation.shape == (4, scope.center.numel()) and radius in RELATION_RADII
    rows = report["rows"]
    assert rows[radius]["zsre"] >= rows[None]["zsre"] - 0.01  # the rephrases keep their edit
    assert rows[radius]["same"] < rows[None]["same"]  # and fewer other questions select it
    assert fit_relation(scope, llama, tokenizer, [EditRecord(r.edit, r.rephrases, []) for r in records]) == \
        (None, None, {"k": 64, "ridge": 0.3})


def test_fit_word_radius_takes_the_lowest_radius_whose_captures_stay_in_bound(llama, tokenizer):
    """Rephrases name their subject and loc prompts name another stored edit's subject: the word check lets both
    in as its radius falls. The fit takes the lowest radius whose captures stay within `max_gain` of no check."""
    from editor_core.data import EditRecord
    from editor_core.scope import WORD_RADII, fit_word_radius

    editor = MENDEditor.for_model(llama, rank=8, init_alpha=1.0).eval()
    scope = Scope.fit(llama, tokenizer, editor.layers, PROMPTS, ScopeConfig(key_block=0, radius=0.999))
    subjects = ["Paris", "Rome", "Oslo", "Cairo", "Lima", "Kyoto", "Perth", "Quito", "Accra", "Hanoi", "Dakar",
                "Minsk"]
    records = [EditRecord(EditRequest(f"{s} is a city in the country of", " X"),
                          [f"Which country has the city of {s}?", f"Tell me the nation where {s} lies"],
                          [EditRequest(f"The mayor of {subjects[(i + 1) % len(subjects)]} is called", " Y")], s)
               for i, s in enumerate(subjects)]
    common = fit_words([r.edit.prompt for r in records] + [r.loc[0].prompt for r in records], 0.4)
    assert common >= {"is", "a", "city", "in", "the", "country", "of"} and "paris" not in common

    radius, report = fit_word_radius(scope, llama, tokenizer, records, common, max_gain=1.0)
    rows = {r: row["zsre"] for r, row in report["rows"].items()}
    assert radius == WORD_RADII[0] and report["questions"]["zsre"] == {"own": 24, "captured": 12}
    assert rows[None]["own"] == 0.0 and rows[radius]["own"] > 0.3  # the key alone selects no rephrase here
    assert all(rows[r]["own"] >= rows[s]["own"] for r, s in zip(WORD_RADII, WORD_RADII[1:]))  # lower: more in
    strict, _ = fit_word_radius(scope, llama, tokenizer, records, common, max_gain=0.0)
    assert strict == 0.55 and rows[strict]["captured"] <= rows[None]["captured"]
    assert all(rows[r]["captured"] > rows[None]["captured"] for r in WORD_RADII if r < strict)
    assert rows[WORD_RADII[0]]["captured"] > rows[None]["captured"]  # the bound had something to keep out
