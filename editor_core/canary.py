"""The canary set: prompts whose greedy answers an edit must leave alone, with the base model's answers as reference.

A canary's answer is ANSWER_TOKENS greedy tokens of the base model (cut after an end token), decoded once at
startup, before the log is replayed. A model "gives the same answer" when, teacher-forced on that answer, its
argmax at every answer position is the reference token: exactly the condition for its own greedy decoding to
reproduce the answer, in one forward instead of ANSWER_TOKENS. The reference argmaxes are computed by that same
forward on the base weights, so an unchanged model agrees bit for bit. An operator's canary may bring its own
answer ({"prompt", "answer"}): the model is then teacher-forced on that text and its argmaxes compared as above.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .data import join
from .generation import end_token_ids
from .hooks import SkipPrefix
from .layers import find_blocks

ANSWER_TOKENS = 4  # enough to see an answer change; each token costs a vocabulary projection per canary per check
BATCH = 32  # rows per forward: bounds the (rows, ANSWER_TOKENS + 1, vocab) logits to ~60 MB at a 50k vocabulary


@dataclass(frozen=True)
class Canary:
    prompt: str
    answer: str | None = None  # None: the base model's greedy answer


@dataclass(frozen=True)
class Change:
    """One canary whose answer moved: the reference answer, and the new one up to its first differing token."""

    prompt: str
    before: str
    after: str


def load_canaries(path: Path, n: int) -> list[Canary]:
    """The first n canaries of a JSON list of prompts or of {"prompt", "answer"} objects; bad files fail loudly."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"canary file {path} cannot be read as JSON: {e}") from e
    if not isinstance(raw, list) or len(raw) < n:
        raise ValueError(f"canary file {path} must be a JSON list of at least {n} canaries (MEND_GUARD_CANARIES)")
    return [_canary(item, path, i) for i, item in enumerate(raw[:n])]


def _canary(item: object, path: Path, i: int) -> Canary:
    if isinstance(item, str):
        item = {"prompt": item}
    ok = isinstance(item, dict) and isinstance(item.get("prompt"), str) and item["prompt"].strip()
    if not ok or not isinstance(item.get("answer", ""), str):
        raise ValueError(f"canary file {path}, entry {i}: expected a prompt or {{\"prompt\": str, \"answer\": str}}")
    answer = item.get("answer", "")
    return Canary(item["prompt"], answer if answer.strip() else None)


def shadow_of(model: nn.Module) -> nn.Module:
    """A second module tree over the same parameter and buffer tensors.

    functional_call swaps tensors on the module it is given for the length of the call; on the served model a
    concurrent /generate would see the candidate weights. On the shadow it swaps only the shadow's attributes.
    """
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


@dataclass
class _Batch:
    input_ids: torch.Tensor  # (B, W) left-padded prompt + answer, so every answer ends at column W - 1
    attention_mask: torch.Tensor
    position_ids: torch.Tensor  # counted from each row's first real token, as if unpadded
    answer: torch.Tensor  # (B, ANSWER_TOKENS) bool: which of the last ANSWER_TOKENS columns are answer tokens
    hidden: torch.Tensor | None = None  # (B, W, H) input of the first edited block: no edit can change it


def _left_padded(rows: list[list[int]], n_answer: list[int], pad: int, device: torch.device) -> _Batch:
    width = max(max(map(len, rows)), ANSWER_TOKENS + 1)  # the kept logits start one column before the answers
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    answer = torch.tensor([[j >= ANSWER_TOKENS - n for j in range(ANSWER_TOKENS)] for n in n_answer], device=device)
    return _Batch(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), answer)


class CanarySet:
    """Canaries tokenized into fixed batches, with the base model's answers; build it on the base weights.

    Blocks below `first_block` (the lowest block any edit touches) never change, so their output on the
    canaries is computed once here; every later check runs only the blocks from `first_block` up, on a shadow
    of the model whose lower blocks replay that output (on SmolLM2 with the last 3 of 30 blocks edited, ~1/10
    of a full forward).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, canaries: list[Canary],
                 first_block: int) -> None:
        self.tokenizer, self.prompts = tokenizer, [c.prompt for c in canaries]
        prompts = [tokenizer(c.prompt)["input_ids"] for c in canaries]
        answers = self._answers(model, canaries, prompts)
        pad = tokenizer.pad_token_id
        self.batches = [_left_padded([p + a for p, a in zip(prompts[i:i + BATCH], answers[i:i + BATCH])],
                                     [len(a) for a in answers[i:i + BATCH]], pad, model.device)
                        for i in range(0, len(canaries), BATCH)]
        for b in self.batches if first_block > 0 else []:
            b.hidden = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                             output_hidden_states=True, logits_to_keep=1).hidden_states[first_block].detach()
        self.shadow, self.first_block = shadow_of(model), first_block
        self._shadow_lock = threading.Lock()  # the shadow's weights and its skipped blocks change during a pass
        self.reference = self._argmax({})

    def __len__(self) -> int:
        return len(self.prompts)

    def _answers(self, model: PreTrainedModel, canaries: list[Canary], prompts: list[list[int]]) -> list[list[int]]:
        """Token ids of each canary's answer: the operator's text, or the model's greedy continuation."""
        greedy = [i for i, c in enumerate(canaries) if c.answer is None]
        decoded = dict(zip(greedy, self._greedy(model, [prompts[i] for i in greedy])))
        out = []
        for i, c in enumerate(canaries):
            given = c.answer and self.tokenizer(join(c.prompt, c.answer)[1], add_special_tokens=False)["input_ids"]
            out.append(decoded[i] if c.answer is None else given[:ANSWER_TOKENS])
        return out

    @torch.no_grad()
    def _greedy(self, model: PreTrainedModel, prompts: list[list[int]]) -> list[list[int]]:
        """ANSWER_TOKENS greedy tokens per prompt, cut after the first end token; batched, left-padded."""
        ends, pad = end_token_ids(model, self.tokenizer), self.tokenizer.pad_token_id
        cfg = GenerationConfig(max_new_tokens=ANSWER_TOKENS, do_sample=False, pad_token_id=pad,
                               eos_token_id=sorted(ends) or None)  # a fresh config: no sampling or penalties
        out = []
        for i in range(0, len(prompts), BATCH):
            b = _left_padded(prompts[i:i + BATCH], [0] * len(prompts[i:i + BATCH]), pad, model.device)
            new = model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, generation_config=cfg)
            out += [_cut_at_end(row, ends) for row in new[:, b.input_ids.shape[1]:].tolist()]
        return out

    @torch.no_grad()
    def _argmax(self, weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """(B, ANSWER_TOKENS) teacher-forced argmax per batch on the shadow, `weights` replacing its own."""
        out, (_, blocks) = [], find_blocks(self.shadow)
        with self._shadow_lock:
            for b in self.batches:
                kw = {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "position_ids": b.position_ids,
                      "logits_to_keep": ANSWER_TOKENS + 1}
                # The blocks below the first edited one are skipped and their cached output fed in; SkipPrefix
                # swaps blocks for every thread, which is safe on the shadow alone, under its lock.
                skip = (SkipPrefix(blocks, self.first_block, b.hidden) if b.hidden is not None
                        else contextlib.nullcontext())
                with skip:
                    logits = torch.func.functional_call(self.shadow, weights, (), kw).logits
                out.append(logits[:, :-1].argmax(-1))  # column j predicts answer column j
        return out

    def _changed(self, argmax: list[torch.Tensor]) -> list[tuple[int, int]]:
        """(canary index, batch row) of every canary with an answer token that differs from the reference."""
        out = []
        for k, (b, ref, new) in enumerate(zip(self.batches, self.reference, argmax)):
            rows = ((ref != new) & b.answer).any(-1).nonzero().flatten().tolist()
            out += [(k * BATCH + r, r) for r in rows]
        return out

    def agreement(self) -> float:
        """Share of canaries the live weights answer as the base did (call under the runtime's read lock)."""
        return 1 - len(self._changed(self._argmax({}))) / len(self)

    def check(self, weights: dict[str, torch.Tensor], examples: int = 3) -> tuple[int, list[Change]]:
        """(changed canaries, the first few changes) if the named weights were replaced; writes no weight."""
        argmax = self._argmax(weights)
        changed = self._changed(argmax)
        return len(changed), [self._change(i, r, argmax[i // BATCH]) for i, r in changed[:examples]]

    def _change(self, i: int, row: int, new: torch.Tensor) -> Change:
        ref, answer = self.reference[i // BATCH][row], self.batches[i // BATCH].answer[row]
        first = int(((ref != new[row]) & answer).nonzero()[0])  # greedy decoding agrees up to here
        start = int(answer.nonzero()[0])
        decode = self.tokenizer.decode
        return Change(self.prompts[i], decode(ref[start:].tolist()),
                      decode(ref[start:first].tolist() + [int(new[row, first])]) + "…")


def _cut_at_end(tokens: list[int], ends: set[int]) -> list[int]:
    for j, t in enumerate(tokens):
        if t in ends:
            return tokens[: j + 1]  # the end token is part of the answer: an edit that makes it talk on changes it
    return tokens
