"""What a reply says, judged on its text: does it give the answer, does it repeat itself, how varied is it.

Generation-based scores (issue 12): a user judges an edit by the greedy reply, not by teacher-forced log-probs.
`says` is the plain-prompt rule (the reply, normalised, starts with the target), `mentions` the chat rule (it
contains it). Fluency follows ROME/MEMIT (Meng et al. 2022): the n-gram entropy of a continuation, plus a
repetition flag (the target, or any 4-gram, 3+ times).
"""
from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Callable

from .data import EditRecord, join

SHORT, LONG = 32, 64  # tokens of a checked reply, and of a fluency continuation
# (prompt, chat question, max new tokens): exactly one of prompt and question is given.
Query = tuple[str | None, str | None, int]
# Queries -> their greedy replies, in order. A check asks for all of its replies at once, so that they can be decoded
# together: in process (editor_core.evaluate, one batch) or over HTTP (bench/says.py, concurrent requests).
Generate = Callable[[list[Query]], list[str]]


def normalized(text: str) -> str:
    """Lower case, words only: how a reply is compared with an answer (" Rome." says "Rome")."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def says(reply: str, target: str) -> bool:
    t = normalized(target)
    return bool(t) and f"{normalized(reply)} ".startswith(f"{t} ")


def mentions(reply: str, target: str) -> bool:
    t = normalized(target)
    return bool(t) and f" {t} " in f" {normalized(reply)} "


def repeats(reply: str, target: str) -> bool:
    """The target 3+ times, or any 4-gram 3+ times."""
    words, t = normalized(reply).split(), normalized(target).split()
    grams = Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
    said = sum(words[i:i + len(t)] == t for i in range(len(words))) if t else 0
    return said >= 3 or any(c >= 3 for c in grams.values())


def ngram_entropy(text: str) -> float:
    """ROME's n_gram_entropy on words: the weighted mean of the bigram and trigram entropies (weights 2/3, 4/3)."""
    words, out = normalized(text).split(), []
    for n, w in ((2, 2 / 3), (3, 4 / 3)):
        counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        out.append(w * -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0)
    return sum(out) / 2


def unrelated(rec: EditRecord, k: int = 2) -> list[str]:
    return [q.prompt for q in rec.loc[:k]]


def other_questions(rec: EditRecord) -> list[str]:
    """Questions about the edited subject asking something else (CounterFact: `data._other_questions`)."""
    return list(rec.extra.get("other_questions", []))


def reply_reference(gen: Generate, rec: EditRecord) -> dict:
    """What the unedited model says: the references of locality and fluency. Take it before the edit."""
    target, others, same = rec.edit.target, unrelated(rec), other_questions(rec)
    answer_in = join(rec.edit.prompt, target)[1]
    *replies, long, after = gen([*((p, None, SHORT) for p in others + same), (rec.edit.prompt, None, LONG),
                                 # minus the answer's own tokens, roughly, so both texts are about LONG tokens long
                                 ("".join(join(rec.edit.prompt, target)), None,
                                  max(LONG - len(target.split()) * 2, 8))])
    return {"unrelated": replies[:len(others)], "same_subject": replies[len(others):], "long": long,
            "answer_in": answer_in + after}


def reply_metrics(gen: Generate, rec: EditRecord, ref: dict) -> tuple[dict[str, float], str]:
    """The record's generation-based scores after its edit, and the 64-token reply to its prompt. `prompt`: the
    reply starts with the new answer; `rephrase`: so do the replies to the first two rephrases; `chat`,
    `chat_rephrase`: the same questions as a chat message mention it; `unchanged`: each unrelated prompt's whole
    reply is the unedited model's; `repeat` and `entropy` of the 64-token reply, beside the unedited model's own
    reply (`*_unedited`) and its continuation with the answer written in (`*_answer_in`); `same_subject`: each
    question about the edited subject asking something else (`other_questions`) gets the unedited model's reply."""
    target, reph, others = rec.edit.target, rec.rephrases[:2], unrelated(rec)
    same = other_questions(rec) if ref.get("same_subject") else []  # (a reference taken before they were asked)
    long, chat, *rest = gen([(rec.edit.prompt, None, LONG), (None, rec.edit.prompt, SHORT),
                             *((p, None, SHORT) for p in others), *((p, None, SHORT) for p in reph),
                             *((None, p, SHORT) for p in reph), *((p, None, SHORT) for p in same)])
    now, rest = rest[:len(others)], rest[len(others):]
    plain_reph, chat_reph, same_now = rest[:len(reph)], rest[len(reph):2 * len(reph)], rest[2 * len(reph):]
    row = {"prompt": float(says(long, target)), "chat": float(mentions(chat, target)), **fluency(long, ref, target)}
    if others:
        row["unchanged"] = statistics.mean(a == b for a, b in zip(now, ref["unrelated"]))
    if same:
        row["same_subject"] = statistics.mean(a == b for a, b in zip(same_now, ref["same_subject"]))
    if reph:
        row["rephrase"] = statistics.mean(says(r, target) for r in plain_reph)
        row["chat_rephrase"] = statistics.mean(mentions(r, target) for r in chat_reph)
    return row, long


def fluency(reply: str, ref: dict, target: str) -> dict[str, float]:
    """Repetition and entropy of the reply and of its references, each judged on as many words as the shorter of
    the reply and the answer-written-in reference: the references are a token or two shorter, and a loop's third
    repeat can fall just past the end of one text and not the other (the same text then counted as 1 and 0)."""
    texts = {"": reply, "_unedited": ref["long"], "_answer_in": ref["answer_in"]}
    n = min(len(normalized(reply).split()), len(normalized(ref["answer_in"]).split()))
    cut = {k: " ".join(normalized(t).split()[:n]) for k, t in texts.items()}
    return {**{f"repeat{k}": float(repeats(t, target)) for k, t in cut.items()},
            **{f"entropy{k}": ngram_entropy(t) for k, t in cut.items()}}
