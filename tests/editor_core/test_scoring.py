"""Answer-position logits: the same numbers as the full forward's, for plain and replaced weights."""
from __future__ import annotations

import torch
from editor_support import REQS

from editor_core.data import EditRequest, target_scores, tokenize_edits
from editor_core.scoring import answer_logits, score_targets


def test_answer_logits_are_the_full_logits_at_answer_positions(model, tokenizer):
    batch = tokenize_edits(tokenizer, REQS)  # right-padded, answers of different lengths
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expected = full[batch["labels"][:, 1:] != -100]
    torch.testing.assert_close(answer_logits(model, batch), expected, rtol=1e-5, atol=1e-5)


def test_answer_logits_with_replaced_weights(model, tokenizer):
    batch = tokenize_edits(tokenizer, REQS[:2])
    name, weight = next((n, p) for n, p in model.named_parameters() if p.dim() == 2 and ".mlp." in n)
    bumped = weight + 0.5 * torch.randn_like(weight)
    before = answer_logits(model, batch)
    after = answer_logits(model, batch, {name: bumped})
    assert not torch.allclose(before, after)  # the replacement reached the forward
    with torch.no_grad():
        saved = weight.clone()
        weight.copy_(bumped)
        try:
            torch.testing.assert_close(after, answer_logits(model, batch), rtol=1e-5, atol=1e-5)
        finally:
            weight.copy_(saved)


def test_target_scores_per_sequence(llama, tokenizer):
    reqs = [REQS[0], EditRequest(REQS[1].prompt, REQS[1].target + " and more words")]
    batch = tokenize_edits(tokenizer, reqs)
    full = llama(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logp, exact, argmax = target_scores(answer_logits(llama, batch), batch["labels"])
    scored = score_targets(llama, tokenizer, reqs)
    for row, s in enumerate(scored):
        lab = batch["labels"][row, 1:]
        m = lab != -100
        lp = torch.log_softmax(full[row][m], -1).gather(-1, lab[m][:, None]).sum()
        assert abs(float(lp) - s.logprob) < 1e-4 and abs(float(logp[row]) - s.logprob) < 1e-4
        assert s.argmax == tuple(full[row][m].argmax(-1).tolist())
        assert s.exact == bool((full[row][m].argmax(-1) == lab[m]).all()) == bool(exact[row])
    assert len(argmax) == int((batch["labels"][:, 1:] != -100).sum())
