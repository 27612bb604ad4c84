"""What a reply says, judged on its text: does it give the answer, does it repeat itself, how varied is it.

Generation-based scores (issue 12): a user judges an edit by the greedy reply, not by teacher-forced log-probs.
`says` is the plain-prompt rule (the reply, normalised, starts with the target), `mentions` the chat rule (it
contains it). Fluency follows ROME/MEMIT (Meng et al. 2022): the n-gram entropy of a continuation, plus a
repetition flag (the target, or any 4-gram, 3+ times).
"""
from __future__ import annotations

import math
import re
from collections import Counter


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
