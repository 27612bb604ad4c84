"""When a generation's selected edit stops acting: the release rule."""
from __future__ import annotations

import re

from ..fluency import normalized

# Tokens a reply may run past the length of the answer it began before that answer counts as gone wrong.
ANSWER_SLACK = 4


class Selection:
    """The edits one request selected, and when they stop acting.

    A scoped delta installs an answer: it is trained (and checked) to make the prompt's continuation start with
    the target, with the delta on at every position. Left on for the rest of a reply, it keeps pushing the answer
    at every later token ("mayor mayor mayor ..."). So a selection is released once the reply so far contains
    every selected edit's target: the forwards after it are the unedited model's, which continues after the new
    answer as it would after any other.

    It is also released when the reply began an answer and got it wrong: it starts with a target's first word,
    then leaves that target's text ("Hammanu Miru" for "Hammanu Mirza", "Arthur Stewart,   " for "Arthur
    Stewart, 1st Duke of Rothesay"), or runs ANSWER_SLACK tokens past its length without saying it. The edit has
    failed for this request, and left on it only keeps the reply from recovering ("Hammanu Miru Miru Miru ...").
    A chat reply that does not begin with the answer (a preamble) keeps the edit until the answer is said.
    A `strict` selection (a plain prompt, whose piece is trained to begin the continuation with the answer) is
    released as soon as the reply is no longer the start of a target: left on, a reply that went wrong inside the
    answer's first word repeats its pieces ("Glansonansonanson" for "Gloria Swanson", "Tyrumumum" for
    "Tyrannum"; 5 of 150 zsRE train edits). Edits logged before targets were stored (no meta["targets"]) never
    release.

    An edit made with `ScopeConfig.end_words` was trained to say its answer and then a token that ends the word
    (`Scope.edit_forms`): its selection (`word_end`) counts the answer said only once the word has ended, so the
    token after the answer is still the edit's ("Oxford." rather than the unedited "Oxfordshire").
    """

    def __init__(self, edit_ids: list[str | None], targets: list[str | None],
                 lengths: list[int | None] | None = None, strict: bool = False, word_end: bool = False) -> None:
        self.edit_ids, self.strict, self.word_end = edit_ids, strict, word_end
        chosen = [(t, n) for e, t, n in zip(edit_ids, targets, lengths or [None] * len(targets))
                  if e is not None and t is not None]
        self._pending = {normalized(t): t.strip().lower() for t, _ in chosen}  # normalised -> as written
        self._lengths = {normalized(t): n for t, n in chosen if n is not None}  # in tokens, when known
        self._release_never = any(e is not None and t is None for e, t in zip(edit_ids, targets))
        self._tokens = 0
        self.released = False

    def observe(self, reply: str) -> bool:
        """Called with the reply generated so far (one row's), once per new token: releases the edits once every
        target is said, or once the answer the reply began has gone wrong. True when this call released them: the
        caller then stops adding them (editor_core.batching drops the row's edit and its cache)."""
        self._tokens += 1
        if self.released or self._release_never or not self._pending:
            return False
        text = f" {normalized(reply)} "
        # With word_end, a last word that may still grow is not yet said: judged once a later token ends it.
        growing = re.search(r"\w*$", reply).group() if self.word_end else ""
        done = f" {normalized(reply[: len(reply) - len(growing)])} " if growing else text
        unsaid = [t for t in self._pending if f" {t} " not in done]  # an empty target is never said
        if not unsaid or any(self._went_wrong(t, reply, text) for t in unsaid):
            self.released = True
        return self.released

    def _went_wrong(self, target: str, reply: str, text: str) -> bool:
        if self.strict and text.strip() and not target.startswith(text.strip()):
            return True  # the reply so far is not the start of the answer: it can no longer begin with it
        if not target or not text.startswith(f" {target.split()[0]}"):
            return False  # not begun: the answer may still come after a preamble
        written, said = self._pending[target], reply.lstrip().lower()
        left = not written.startswith(said)  # what is said so far is no longer the start of the answer
        n = self._lengths.get(target)
        return left or (n is not None and self._tokens > n + ANSWER_SLACK)
