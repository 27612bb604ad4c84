"""The settings of a scope, saved beside it as scope.json."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScopeConfig:
    key_block: int = 10  # keys are the output of this block (the input of the next), mean-pooled over the prompt
    window: int = 0  # ... over its last `window` tokens (0: all): a preamble before the question then matters less
    radius: float = 0.7  # cosine similarity from which an edit applies
    # Outside its radius a scoped delta does nothing, so its step can be larger than the in-place one, whose size
    # the editor learned to trade against locality.
    scale: float = 1.0
    # An edit whose own prompt does not yet give its target at `scale` is retried at 2x, 4x ... up to this step:
    # the step it needs differs from fact to fact. 0 (or <= scale): always `scale`.
    max_scale: float = 0.0
    # An edit that still does not give its target at the largest step gets up to this many Adam steps on its
    # pieces' left factors (MEND's ũ kept as the right ones), on its own target, until it does (`Scope._tuned`).
    tune_steps: int = 0
    tune_lr: float = 0.05  # Adam's step, relative to each left factor's mean magnitude
    # Each form's target is extended by the token that ends its word (`Scope.edit_forms`), and the edit released
    # only after it: released on the answer's last piece, the unedited model goes on with the word ("Oxfordshire").
    end_words: bool = False
    # With a bank of other questions' keys (`Scope.bank`), an edit's radius is raised to this much above the
    # nearest of them (`Scope.radii`).
    bank_margin: float = 0.01
    # With a fitted relation projection (`Scope.relation`), a prompt selects an edit only if their relation keys
    # also meet at this cosine (`RelationCheck`). None: no such check.
    relation_radius: float | None = None
    # With fitted common words (`Scope.common`), a prompt naming every rare word of an edit's question may select it
    # from this cosine (`WordCheck`). None: no such way in.
    word_radius: float | None = None
