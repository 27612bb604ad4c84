"""How a prompt is keyed: one middle block's hidden states, mean-pooled over the prompt, centred on generic prompts,
whitened and normalised. A request is keyed by the best of its sentence suffixes."""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..hooks import input_of_block
from ..layers import find_blocks
from .config import ScopeConfig

if TYPE_CHECKING:
    from .codebook import Codebook
    from .scope import Scope

MEMO_PROMPTS = 4096  # pooled prompt states kept (2.3 KB each on SmolLM2)

# A request whose whole prompt keys this close to the key it selects is asked in the edit's own words (the edit
# prompt itself, keyed again): it gets the stored piece.
OWN_WORDING = 0.9999


def sentence_suffixes(prompt: str) -> list[str]:
    """The prompt, then what follows each sentence end in it."""
    return [prompt] + [prompt[m.end():] for m in re.finditer(r"[.?!]\s+|\n+", prompt) if prompt[m.end():].strip()]


class Keying:
    """The keys of prompts (part of `Scope`: reads its cfg, centre, whitening `proj` and bank)."""

    cfg: ScopeConfig
    center: torch.Tensor
    proj: torch.Tensor | None
    bank: torch.Tensor | None
    _memo: OrderedDict[str, torch.Tensor]
    _memo_lock: threading.Lock
    _memo_model: int | None

    @torch.no_grad()
    def _pooled(self, model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, d) mean hidden state after block `key_block` over each right-padded prompt's last `window` tokens;
        the forward stops there (a third of a whole forward on SmolLM2)."""
        _, blocks = find_blocks(model)
        with self.off():
            hidden = input_of_block(model, blocks[self.cfg.key_block + 1], input_ids=input_ids.to(model.device),
                                    attention_mask=attention_mask.to(model.device))
        return self._pool(hidden, attention_mask)

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, d) mean of `hidden` over each prompt's real tokens (padded on either side), its last `window`."""
        mask = attention_mask.to(hidden.device).float()
        lengths = mask.sum(1, keepdim=True)
        rank = mask.cumsum(1) - 1  # a real token's place in its prompt
        if self.cfg.window:
            mask = mask * (rank >= lengths - self.cfg.window)
        # The first token is an attention sink whose hidden state is orders of magnitude larger than the rest:
        # left in, it dominates every mean and all keys look alike. Kept only for one-token prompts.
        mask = mask * ((rank != 0) | (lengths <= 1))
        return ((hidden.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).cpu()

    def pooled_prompts(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                       batch_size: int = 32) -> torch.Tensor:
        """(len(prompts), d) pooled states, each text's computed once per model (an edit keys its prompt for the
        score before, the edit itself and the score after; keys come from unedited blocks, so they never change)."""
        with self._memo_lock:
            if self._memo_model != id(model):
                self._memo.clear()
                self._memo_model = id(model)
            todo = list(dict.fromkeys(p for p in prompts if p not in self._memo))
        fresh = {}
        for i in range(0, len(todo), batch_size):
            enc = tok(todo[i : i + batch_size], return_tensors="pt", padding=True)
            pooled = self._pooled(model, enc["input_ids"], enc["attention_mask"])
            fresh.update(zip(todo[i : i + batch_size], [row.clone() for row in pooled]))
        with self._memo_lock:
            out = torch.stack([fresh[p] if p in fresh else self._memo[p] for p in prompts]) if prompts else \
                torch.zeros(0, self.center.numel())
            for text, pooled in fresh.items():
                self._memo[text] = pooled
                self._memo.move_to_end(text)
            while len(self._memo) > MEMO_PROMPTS:
                self._memo.popitem(last=False)
        return out

    def prompt_keys(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str]) -> torch.Tensor:
        return self.unit(self.pooled_prompts(model, tok, prompts))

    def candidate_keys(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase,
                       prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Keys of every prompt and of each of its sentence suffixes (the prompt without its first sentence,
        without its first two, ...), and which prompt each row is of. A question asked after an unrelated sentence
        ("It is found in Namibia. Frankie Albert, the") is then matched by its last sentence alone."""
        pooled, owner = self.candidate_pooled(model, tok, prompts)
        return self.unit(pooled), owner

    def candidate_pooled(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase,
                         prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        texts, owner = [], []
        for i, p in enumerate(prompts):
            for text in sentence_suffixes(p):
                texts.append(text)
                owner.append(i)
        return self.pooled_prompts(model, tok, texts), owner

    def request_keys(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                     book: Codebook | None = None) -> torch.Tensor:
        """(B, d): per prompt, the candidate key (see `candidate_keys`) most similar to a stored edit key; the
        whole prompt's key when nothing is stored or it is the best (ties go to the whole prompt)."""
        book = book or self.codebook
        keys, owner = self.candidate_keys(model, tok, prompts)
        best = book.best_sim(keys) if book.live else torch.zeros(len(keys))
        return keys[best_candidates(best, owner, len(prompts))]

    def unit(self, pooled: torch.Tensor) -> torch.Tensor:
        return normed(self._centred(pooled))

    def _centred(self, pooled: torch.Tensor) -> torch.Tensor:
        k = pooled - self.center
        return k if self.proj is None else k @ self.proj.T

    def with_bank(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str]) -> Scope:
        """This scope with a bank of these prompts' keys, one row per distinct prompt: questions other than any edit
        yet to come."""
        self.bank = self.prompt_keys(model, tok, list(dict.fromkeys(prompts))).half().float()  # as saved
        return self

    def radii(self, keys: torch.Tensor) -> list[float] | None:
        """Per edit key: its own radius, `bank_margin` above its nearest bank question, so that its scope covers
        none of them (the scope's radius still floors it). None without a bank."""
        if self.bank is None or not len(self.bank):
            return None
        # A bank row that is the edit's own question is not another question: counted, an edit of a bank question
        # got a radius above its own prompt's cosine (1 + margin) and no request could select it.
        sim = keys.float() @ self.bank.T
        nearest = sim.masked_fill(sim >= OWN_WORDING, float("-inf")).max(1).values + self.cfg.bank_margin
        return [round(float(r), 6) for r in nearest.clamp(min=self.cfg.radius)]


def normed(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def best_candidates(sim: torch.Tensor, of: list[int], n: int) -> torch.Tensor:
    """Per question (n of them, candidate rows `of`): the row of its candidate with the highest `sim` (the first on
    ties), as `request_keys` picks the candidate a request is keyed by."""
    best: dict[int, int] = {}
    sim = sim.tolist()
    for j, q in enumerate(of):
        if q not in best or sim[j] > sim[best[q]]:
            best[q] = j
    return torch.tensor([best[q] for q in range(n)], dtype=torch.long)
