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


# ---- long-form corrections (issue 32) -----------------------------------------------------------------------------

STRAY = re.compile(r"[^\w\s.,;:!?'\"()\-]{2,}|[|•]")  # "2|•." "Sat||-": symbol runs no sentence has
DOUBLED = re.compile(r"\b(\w{3,})\s+\1\b", re.IGNORECASE)  # "known known": a word said twice over


def junk(reply: str, target: str) -> list[str]:
    """What is broken in a reply to a long-form correction: stray symbol runs, a word doubled that the target does
    not double, and the target cut off (its first words said, then something else before its end)."""
    out = []
    if STRAY.search(reply) and not STRAY.search(target):
        out.append("symbols")
    if DOUBLED.search(reply) and not DOUBLED.search(target):
        out.append("doubled")
    said, want = normalized(reply).split(), normalized(target).split()
    if not mentions(reply, target) and len(want) > 2 and said[:2] == want[:2]:
        out.append("cut")
    return out


def after_answer(reply: str, target: str) -> str:
    """The part of a reply after the target sentence (all of it if the target is not there)."""
    words, t = normalized(reply).split(), normalized(target).split()
    for i in range(len(words) - len(t) + 1):
        if words[i : i + len(t)] == t:
            return " ".join(words[i + len(t):])
    return " ".join(words)


def long_reference(gen: Generate, rec: EditRecord) -> dict:
    """The unedited model's replies to the neighbours: what must not change."""
    return {"unrelated": gen([(p, None, SHORT) for p in unrelated(rec)])}


def long_metrics(gen: Generate, rec: EditRecord, ref: dict) -> tuple[dict[str, float], str]:
    """A long-form correction's scores, and the LONG-token reply to its question: `whole` (the reply contains the
    whole target sentence, normalised), `object` (it states the new object), both in chat (`chat_whole`,
    `chat_object`); the rephrase states the object (`rephrase_object`, plain and chat); `junk` (any of `junk`'s
    faults in any of these replies); `unchanged` (neighbours' replies); `repeat` and `entropy` of the text after
    the answer."""
    target, obj, others, reph = rec.edit.target, rec.extra["object"], unrelated(rec), rec.rephrases[:1]
    q = rec.edit.prompt
    long, chat, *rest = gen([(q, None, LONG), (None, q, LONG), *((p, None, LONG) for p in reph),
                             *((None, p, LONG) for p in reph), *((p, None, SHORT) for p in others)])
    plain_reph, chat_reph, now = rest[:len(reph)], rest[len(reph):2 * len(reph)], rest[2 * len(reph):]
    replies = [long, chat, *plain_reph, *chat_reph]
    tail = after_answer(long, target)
    row = {"whole": float(mentions(long, target)), "object": float(mentions(long, obj)),
           "chat_whole": float(mentions(chat, target)), "chat_object": float(mentions(chat, obj)),
           "junk": float(any(junk(r, target) for r in replies)),
           "repeat": float(repeats(tail, obj)) if len(tail.split()) >= 4 else 0.0,
           "entropy": ngram_entropy(tail)}
    if reph:
        row["rephrase_object"] = statistics.mean(mentions(r, obj) for r in plain_reph)
        row["chat_rephrase_object"] = statistics.mean(mentions(r, obj) for r in chat_reph)
    if others:
        row["unchanged"] = statistics.mean(a == b for a, b in zip(now, ref["unrelated"]))
    return row, long
