"""The computation of a scoped edit: MEND's delta of each form, its word end, the step search and the tuning."""
from __future__ import annotations

import contextlib
import weakref

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import EditRequest, target_nll, target_scores, tokenize_edits
from ..delta import LowRankDelta
from ..layers import EditedLayer, first_block
from ..prefix_cache import PrefixCache
from ..projection import project
from ..scoring import answer_logits, score_targets
from .config import ScopeConfig
from .forms import PLAIN, forms_of, in_forms
from .meta import ScopedMeta
from .store import DIGEST, LAZY


class Computing:
    """The computation of a scoped edit (part of `Scope`)."""

    cfg: ScopeConfig
    layers: list[EditedLayer]

    def compute(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, editor, requests: list[EditRequest],
                rel_tol: float = 0.0, dtype: torch.dtype | None = None,
                prefix: PrefixCache | None = None) -> LowRankDelta:
        """The scoped edit of these requests, as the service logs it: `editor`'s delta (a `MENDEditor`) of each request
        in every form (`in_forms`), compressed (`LowRankDelta.compressed`), its step found and tuned on its own
        target ended as `edit_forms` ends it (`scoped`).

        Every forward of it (the word ends, MEND's, each step's check and each tuning step) reads the same few
        sequences, and no scoped delta acts below the first edited block: that block's input is computed once per
        sequence (`PrefixCache`) and the checks run the edited blocks only. On SmolLM2 a forward costs about the
        same for 10 tokens as for 40 (the weights are read either way), and 27 of 30 blocks are below. `prefix`:
        a store to share (the service's scores of the same edit read its plain form)."""
        prefix = prefix or PrefixCache(model, first_block(self.layers))
        ended = self.edit_forms(model, tok, requests, prefix)
        pieces = editor.compute_deltas(model, tok, ended, prefix=prefix)
        if rel_tol or dtype:
            pieces = [p.compressed(rel_tol, dtype) for p in pieces]
        return self.scoped(model, tok, pieces, ended, [r.prompt for r in requests], forms_of(tok),
                           answers=[r.target for r in requests], prefix=prefix)

    @torch.no_grad()
    def defined(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase,
                requests: list[EditRequest], batch_size: int = 64) -> list[LowRankDelta]:
        """Each request as a scoped edit whose factors are not computed yet (`LAZY`): its key, radius, prompt and
        answer, all that selection reads. `compute` of its request makes its factors, at its first selection; a
        bulk import pays only for keys (a third of a forward, batched)."""
        prompts = [r.prompt for r in requests]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batched by length: less padding
        pooled = torch.empty(len(prompts), self.center.numel())
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            pooled[rows] = self.pooled_prompts(model, tok, [prompts[j] for j in rows], batch_size)
        keys = self.unit(pooled)
        radii = self.radii(keys)
        out = []
        for i, r in enumerate(requests):
            meta = ScopedMeta(prompts=(r.prompt,), targets=(r.target,), forms=None if forms_of(tok) == (PLAIN,)
                              else forms_of(tok), radii=None if radii is None else (radii[i],))
            out.append(LowRankDelta({}, {**meta.written(), DIGEST: LAZY}, keys[i : i + 1].clone()))
        return out

    @torch.no_grad()
    def edit_forms(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, requests: list[EditRequest],
                   prefix: PrefixCache | None = None) -> list[EditRequest]:
        """Each request in every form (`in_forms`), and with `end_words`, where the unedited model would run the
        answer on into a longer word (its favourite token after prompt + target, in any form, begins with a letter
        or a digit: " Oxford" -> "shire"), every form's target extended by the token that ends the word, the one it
        likes best there among the tokens that begin with neither (" Oxford" -> " Oxford."). Only the answers that
        would run on: one the model already ends by itself (" Spanish" -> " language") gains nothing from the extra
        token, and a delta trained to say it reaches other wordings less well."""
        forms = in_forms(tok, requests)
        return self._ended(model, tok, forms, len(forms) // max(len(requests), 1), prefix)

    @torch.no_grad()
    def _ended(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, forms: list[EditRequest], group: int,
               prefix: PrefixCache | None = None) -> list[EditRequest]:
        """`edit_forms`' word ends on requests that come in groups of `group` forms of one edit: a group's targets
        are extended when any of its forms would run on."""
        if not self.cfg.end_words:
            return forms
        batch = {k: v.to(model.device) for k, v in tokenize_edits(tok, forms).items()}
        with self.off(), prefix.skipping(batch) if prefix else contextlib.nullcontext():
            hidden = model.base_model(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"]
        last = hidden[torch.arange(len(forms), device=hidden.device), mask.sum(1) - 1]
        logits = project(model.get_output_embeddings(), last).float()
        ends, goes_on = _word_tokens(tok)
        k = min(len(ends), logits.shape[1])
        best = logits[:, :k].masked_fill(~ends[:k].to(logits.device), float("-inf")).argmax(1).tolist()
        runs_on = goes_on[logits[:, :k].argmax(1).cpu()].view(-1, group).any(1).tolist()
        return [EditRequest(r.prompt, r.target + tok.decode([b])) if runs_on[i // group] else r
                for i, (r, b) in enumerate(zip(forms, best))]

    def scoped(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, pieces: list[LowRankDelta],
               requests: list[EditRequest], keyed_by: list[str] | None = None,
               forms: tuple[str, ...] = (PLAIN,), answers: list[str] | None = None,
               prefix: PrefixCache | None = None) -> LowRankDelta:
        """One scoped edit from each request's own delta (`MENDEditor.compute_deltas`): piece i is keyed by prompt i
        and applies to the prompts that select that key, so edits sent together do not add up on each other's
        prompts. Each piece's step is `scale`, doubled while its own target is not the teacher-forced argmax and
        the step stays <= `max_scale`; a piece that still misses is tuned (`_tuned`). The pieces travel as one
        delta: factors concatenated along the rank axis, their ranks per layer in meta["key_ranks"].

        With several `forms` (the plain prompt, and the same question inside the chat template), pieces come in
        groups of len(forms): piece i*F + j is edit i computed in form j, and all F share one key, the key of
        `keyed_by[i]` (the question as a plain prompt). A request selects the edit by its question and applies the
        piece of its own form, so a fact edited once shows in plain and in chat requests alike.

        `answers`: each edit's answer as the user gave it, stored as its target, when `requests` carry targets
        extended by `edit_forms` (default: the plain form's target). `prefix`: the block inputs of these requests'
        sequences, shared with the forwards that made `pieces` (`compute`)."""
        n_forms = len(forms)
        keyed_by = keyed_by if keyed_by is not None else [r.prompt for r in requests]
        if len(pieces) != len(requests) or len(requests) != len(keyed_by) * n_forms:
            raise ValueError(f"{len(pieces)} deltas for {len(requests)} requests in {n_forms} forms of "
                             f"{len(keyed_by)} prompts")
        # Keyed with their sentence suffixes in one batch: scoring a prompt (/edit's scores before and after)
        # selects by all of them (`request_keys`), and a forward costs about the same for one text as for a few.
        pooled, owner = self.candidate_pooled(model, tok, keyed_by)
        keys = self.unit(pooled[[owner.index(i) for i in range(len(keyed_by))]])
        prefix = prefix or PrefixCache(model, first_block(self.layers))
        scaled = self._stepped(model, tok, pieces, [keys[i // n_forms][None] for i in range(len(pieces))], requests,
                               prefix)
        radii = self.radii(keys)
        # The prompts keyed by travel with the edit: the word check (`WordCheck`) reads their rare words when the
        # codebook takes it, so common words can be refitted under a running log.
        targets = answers if answers is not None else [r.target for r in requests[::n_forms]]
        meta = ScopedMeta(scope_scale=tuple(step for _, step in scaled), prompts=tuple(keyed_by),
                          targets=tuple(targets),
                          key_ranks={n: [d.factors[n][0].shape[1] for d, _ in scaled] for n in pieces[0].factors},
                          forms=None if forms == (PLAIN,) else tuple(forms),
                          radii=None if radii is None else tuple(radii),
                          # Per edit: whether its target was extended to end its word (the plain form's target is
                          # then longer than the answer): only those wait for the word's end before their release.
                          word_end=tuple(r.target != a for r, a in zip(requests[::n_forms], answers))
                          if answers is not None and self.cfg.end_words else None)
        return LowRankDelta(LowRankDelta.stack([d for d, _ in scaled]).factors, {**pieces[0].meta, **meta.written()},
                            keys)

    def _stepped(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, pieces: list[LowRankDelta],
                 keys: list[torch.Tensor], requests: list[EditRequest],
                 prefix: PrefixCache) -> list[tuple[LowRankDelta, float]]:
        """Each piece at the smallest step from `scale` up (doubling, at most `max_scale`) at which its own request
        gives its target; the pieces still short are checked together, one forward a round."""
        steps = [self.cfg.scale] * len(pieces)

        def scaled(i: int) -> LowRankDelta:
            return LowRankDelta({n: (left * steps[i], right) for n, (left, right) in pieces[i].factors.items()},
                                key=keys[i])

        short = [i for i in range(len(pieces)) if steps[i] * 2 <= self.cfg.max_scale]
        took_at = {}  # piece -> whether it took at its final step, for the pieces checked there
        while short:
            took = self._takes(model, tok, [scaled(i) for i in short], [requests[i] for i in short], prefix)
            for i, ok in zip(short, took):
                if ok or steps[i] * 2 > self.cfg.max_scale:
                    took_at[i] = ok
                else:
                    steps[i] *= 2
            short = [i for i, ok in zip(short, took) if not ok and steps[i] * 2 <= self.cfg.max_scale]
        out = [scaled(i) for i in range(len(pieces))]
        if self.cfg.tune_steps:
            unknown = [i for i in range(len(pieces)) if i not in took_at]
            if unknown:
                took_at.update(zip(unknown, self._takes(model, tok, [out[i] for i in unknown],
                                                        [requests[i] for i in unknown], prefix)))
            missed = [i for i in range(len(pieces)) if not took_at[i]]
            if missed:
                tuned = self._tuned(model, tok, [out[i] for i in missed], [requests[i] for i in missed], prefix)
                for i, delta in zip(missed, tuned):
                    out[i] = LowRankDelta(delta.factors, key=keys[i])
        return list(zip(out, steps))

    def _tuned(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, deltas: list[LowRankDelta],
               requests: list[EditRequest], prefix: PrefixCache) -> list[LowRankDelta]:
        """Row i's delta with its left factors moved by Adam (at most `tune_steps` steps) to lower the NLL of its own
        target, until every target is the teacher-forced argmax. The right factors stay MEND's ũ, so the delta reads
        the same directions of the layer's input and stays as low-rank as it was.

        Why: some edits miss their own prompt at every step, and no larger step helps: what they miss is the
        direction of the output change, mostly on the later tokens of a multi-word answer ("Hammanu Miruza" for
        "Hammanu Mirza"). Only the edits that miss pay for it, and a scoped delta acts only inside its radius."""
        lefts = [{n: left.detach().clone().float().requires_grad_(True) for n, (left, _) in d.factors.items()}
                 for d in deltas]
        rights = [{n: right for n, (_, right) in d.factors.items()} for d in deltas]
        opt = torch.optim.Adam([{"params": [left], "lr": self.cfg.tune_lr * float(left.detach().abs().mean()) + 1e-12}
                                for ls in lefts for left in ls.values()])
        batch = {k: v.to(model.device) for k, v in tokenize_edits(tok, requests).items()}
        with self._attached(model):
            for _ in range(self.cfg.tune_steps):
                with torch.enable_grad():
                    pieces = [LowRankDelta({n: (ls[n], rs[n]) for n in ls}) for ls, rs in zip(lefts, rights)]
                    with self.acting(self.stacked(pieces)), prefix.skipping(batch):
                        logits = answer_logits(model, batch)
                    took = target_scores(logits.detach(), batch["labels"])[1]
                    if took.all():
                        break
                    loss = (target_nll(logits, batch["labels"]) * (~took).float()).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        return [LowRankDelta({n: (ls[n].detach().to(d.factors[n][0].dtype), rs[n]) for n in ls})
                for ls, rs, d in zip(lefts, rights, deltas)]


    def _takes(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, deltas: list[LowRankDelta],
               requests: list[EditRequest], prefix: PrefixCache) -> list[bool]:
        """Per request: is its target the teacher-forced argmax with its own delta (row i applies deltas[i])."""
        with self._attached(model), self.acting(self.stacked(deltas)):
            return [s.exact for s in score_targets(model, tok, requests, prefix=prefix)]

    # ---- the codebook --------------------------------------------------------------------------------------

_WORD_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> `_word_tokens`


def _word_tokens(tok: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (vocab,) bool masks of the tokens that are not special: those that begin with neither a letter nor a
    digit, which following an answer end its last word; and those that begin with one, which go on with it."""
    if tok not in _WORD_TOKENS:
        special = set(tok.all_special_ids)
        texts = [None if i in special else tok.decode([i]) for i in range(len(tok))]
        _WORD_TOKENS[tok] = (torch.tensor([bool(t) and not t[0].isalnum() for t in texts]),
                             torch.tensor([bool(t) and t[0].isalnum() for t in texts]))
    return _WORD_TOKENS[tok]
