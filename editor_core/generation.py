"""What decoding one request needs besides the forwards (editor_core.batching runs those): its prompt's tokens,
sampling with its own generator, stop strings, and how much of its text can be streamed.

transformers' generate() seeds through the global RNG, which concurrent requests would share; each request here
keeps its own torch.Generator, so a seed gives the same text alone or decoded in a batch with others.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


def chat_text(tok: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    """A chat request as the model reads it: the messages in its chat template, ready for the assistant's reply."""
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tok: PreTrainedTokenizerBase, prompt: str | None = None,
               messages: list[dict] | None = None) -> list[int]:
    """The token ids of a plain prompt, or of chat messages in the chat template (which brings its own special
    tokens)."""
    if messages is None:
        return tok(prompt)["input_ids"]
    return tok(chat_text(tok, messages), add_special_tokens=False)["input_ids"]


def end_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return {i for i in ids if i is not None}


def pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """Greedy at temperature 0; otherwise nucleus sampling over the smallest set with mass >= top_p."""
    if temperature == 0:
        return int(logits.argmax())
    # float64 and the max subtracted: no overflow to inf/NaN at any temperature > 0, however small
    probs = torch.softmax((logits.double() - logits.max()) / temperature, -1)
    if top_p >= 1:
        return draw(probs, gen)
    sorted_p, order = _head(probs, top_p)
    keep = (sorted_p.cumsum(0) - sorted_p) < top_p  # the token that crosses top_p stays in
    keep[0] = True  # and the most likely one always does, even for a top_p that rounds to 0
    return int(order[draw(sorted_p * keep, gen)])


def draw(weights: torch.Tensor, gen: torch.Generator) -> int:
    """An index drawn with probability proportional to `weights` (>= 0, not all 0), from one uniform of `gen`:
    the inverse of the cumulative sum. torch.multinomial over a 49k vocabulary was the largest cost of a decoding
    step after the matrix products (cProfile of `Batch.step`, 8 rows of SmolLM2)."""
    cdf = weights.cumsum(0)
    u = torch.rand((), generator=gen, dtype=cdf.dtype) * cdf[-1]
    return int(torch.searchsorted(cdf, u, right=True).clamp_max(len(cdf) - 1))


NUCLEUS_GUESS = 256  # most nuclei are far smaller than the vocabulary, and a sort of all of it costs a token dearly


def _head(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely tokens, in descending order, down to at least mass top_p (all of them when the guess
    falls short): what a full sort would give before the nucleus' end."""
    if len(probs) > NUCLEUS_GUESS:
        head, order = probs.topk(NUCLEUS_GUESS)
        if head.sum() >= top_p:
            return head, order
    return probs.sort(descending=True)


def cut_at_stop(text: str, stop: list[str]) -> str | None:
    hits = [text.index(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else None


# A tokenizer's decode may still rewrite the end of the text when the next token comes: an incomplete UTF-8
# sequence decodes as U+FFFD, and clean_up_tokenization_spaces drops a space before punctuation. A newline stays:
# held back, a reply that starts on a new line (as SmolLM2's often do) sent nothing until its second token.
UNSETTLED_END = re.compile(r"[ \ufffd]+\Z")


def settled(text: str, stop: list[str]) -> int:
    """How much of the reply so far can be sent: not an end that the next token may rewrite, nor an end that may be
    the start of a stop string (the reply is then cut there, and sent text cannot be taken back)."""
    end = len(UNSETTLED_END.sub("", text))
    longest = max(map(len, stop), default=0)
    for i in range(max(0, end - longest + 1), end):
        if any(s.startswith(text[i:end]) for s in stop if s):
            return i
    return end
