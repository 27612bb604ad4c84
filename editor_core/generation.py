"""Token-by-token sampling with a per-request generator, so that a seed gives the same text under concurrency.

transformers' generate() seeds through the global RNG, which concurrent requests would share; this loop
keeps its own torch.Generator and applies stop strings itself. It yields the text as it is made (for streaming);
`complete` runs it to the end.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Generator
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


def prompt_ids(tok: PreTrainedTokenizerBase, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
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
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(0) - sorted_p) < top_p  # the token that crosses top_p stays in
    keep[0] = True  # and the most likely one always does, even for a top_p that rounds to 0
    sorted_p = sorted_p * keep
    return int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)])


def cut_at_stop(text: str, stop: list[str]) -> str | None:
    hits = [text.index(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else None


# A tokenizer's decode may still rewrite the end of the text when the next token comes: an incomplete UTF-8
# sequence decodes as U+FFFD, and clean_up_tokenization_spaces drops a space before punctuation.
UNSETTLED_END = re.compile(r"[\s\ufffd]+\Z")


def settled(text: str, stop: list[str]) -> int:
    """How much of the reply so far can be sent: not an end that the next token may rewrite, nor an end that may be
    the start of a stop string (the reply is then cut there, and sent text cannot be taken back)."""
    end = len(UNSETTLED_END.sub("", text))
    longest = max(map(len, stop), default=0)
    for i in range(max(0, end - longest + 1), end):
        if any(s.startswith(text[i:end]) for s in stop if s):
            return i
    return end


@torch.no_grad()
def stream_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, input_ids: list[int],
                  max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                  stop: list[str] | None = None,
                  observe: Callable[[str], bool] | None = None) -> Generator[str, None, Completion]:
    """The reply as it is made: yields pieces of its text, each as soon as no later token can change it or make it
    part of a stop string, and returns the Completion, whose text the pieces add up to.

    `observe`, if given, sees the decoded reply after every token and returns True when the forwards from now
    on compute something else (a scoped edit released once its answer is said): the cache built under the edit is
    then dropped and the text so far prefilled again, so the rest of the reply is exactly what the model from
    now on says after that text."""
    gen = torch.Generator()
    gen.manual_seed(seed) if seed is not None else gen.seed()
    ends, new, cache, sent, stop = end_token_ids(model, tokenizer), [], None, 0, stop or []
    x = torch.tensor([input_ids], device=model.device)
    for _ in range(max_new_tokens):
        out = model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1)  # only the last position's logits
        cache = out.cache
        tok = pick(out.logits[0, -1].float().cpu(), temperature, top_p, gen)
        if tok in ends:
            done = Completion(tokenizer.decode(new, skip_special_tokens=True), len(new), "stop")
            break
        new.append(tok)
        text = tokenizer.decode(new, skip_special_tokens=True)
        changed = observe is not None and observe(text)
        cut = cut_at_stop(text, stop)
        if cut is not None:
            done = Completion(cut, len(new), "stop")
            break
        if (end := settled(text, stop)) > sent:
            yield text[sent:end]
            sent = end
        x = torch.tensor([[tok]], device=model.device)
        if changed:
            x, cache = torch.tensor([input_ids + new], device=model.device), None
    else:
        done = Completion(tokenizer.decode(new, skip_special_tokens=True), len(new), "length")
    if len(done.text) > sent:
        yield done.text[sent:]
    return done


def complete(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, input_ids: list[int], max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
             stop: list[str] | None = None, observe: Callable[[str], bool] | None = None) -> Completion:
    """The whole reply at once: `stream_tokens`, run to its end."""
    tokens = stream_tokens(model, tokenizer, input_ids, max_new_tokens, temperature, top_p, seed, stop, observe)
    while True:
        try:
            next(tokens)
        except StopIteration as end:
            return end.value
