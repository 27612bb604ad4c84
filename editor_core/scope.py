"""Scoped edits: each edit's low-rank delta acts only on prompts whose key lies within a radius of the edit's own.

In-place MEND edits interfere: every delta moves the output of every input that is not orthogonal to its
u-factors, and after a few dozen sequential edits the model collapses (weights/README.md, "Sequential"). A
scoped edit is a GRACE-style codebook entry whose value is MEND's delta: the key of a prompt is the mean of one
middle block's hidden states over the prompt's tokens, centred on generic prompts and normalised; at inference a
prompt gets the delta of the nearest edit key with cosine >= radius (ties: the newest edit), and the weights
never change. Locality then holds by construction outside the radius, and 1,000 edits cost what one does.

Edits sent together keep their own deltas: key row i of a scoped delta applies the i-th share of its rank
(meta["key_ranks"]), so a batch of 25 is 25 scoped edits logged as one.

Keys come from block `key_block` of the unedited model, so they do not drift as edits pile up; new deltas are
computed on the unedited weights, so an edit never depends on which others happen to be stored.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import EditRequest, target_nll, target_scores, tokenize_edits
from .delta import LowRankDelta
from .fluency import normalized
from .generation import chat_text
from .hooks import input_of_block
from .layers import EditedLayer, find_blocks, first_block
from .prefix_cache import PrefixCache
from .projection import project
from .scoring import answer_logits, score_targets

CONFIG_FILE, WEIGHTS_FILE, WORDS_FILE = "scope.json", "scope.safetensors", "words.json"
MEMO_PROMPTS = 4096  # pooled prompt states kept (2.3 KB each on SmolLM2)
WORDED_PIECES = 256  # pieces computed for other wordings of stored edits kept (`Scope.worded`; 152 KB each, p50)
# A request whose whole prompt keys this close to the key it selects is asked in the edit's own words (the edit
# prompt itself, keyed again): it gets the stored piece.
OWN_WORDING = 0.9999
PLAIN, CHAT = "plain", "chat"  # the forms a request comes in: a bare prompt, or a question in the chat template


def forms_of(tok: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """The forms a request to this model can come in."""
    return (PLAIN, CHAT) if tok.chat_template else (PLAIN,)


def in_forms(tok: PreTrainedTokenizerBase, requests: list[EditRequest]) -> list[EditRequest]:
    """Each edit in every form a request can ask it in (`forms_of`): the plain prompt, and the same question as
    the user's message in the chat template, the target being the assistant's reply. A delta computed on the
    plain prompt alone said the new answer in only 0.60 of chat replies (20 zsRE dev edits)."""
    out, chat_too = [], CHAT in forms_of(tok)
    for r in requests:
        out.append(r)
        if chat_too:
            out.append(EditRequest(chat_text(tok, [{"role": "user", "content": r.prompt}]), r.target.strip()))
    return out


def sentence_suffixes(prompt: str) -> list[str]:
    """The prompt, then what follows each sentence end in it."""
    return [prompt] + [prompt[m.end():] for m in re.finditer(r"[.?!]\s+|\n+", prompt) if prompt[m.end():].strip()]


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
    failed for this request, and left on it only keeps the reply from recovering ("Hammanu Miru Miru Miru ..."):
    on 40 sequential zsRE dev edits, two such replies were the whole entropy gap to the unedited model (2.21 vs
    2.40). A chat reply that does not begin with the answer (a preamble) keeps the edit until the answer is said.
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


@dataclass(frozen=True)
class Choice:
    """The edit one request selected: the piece that acts on its forwards (the one for the form it was asked in),
    and the selection that says when it stops acting."""

    piece: LowRankDelta
    selection: Selection


@dataclass(frozen=True)
class Worded:
    """A piece of a stored edit computed for one other wording of its question (`Scope.worded`): what a request in
    that wording applies if, in its own codebook, it selects key row `row` of edit `edit_id`."""

    edit_id: str
    row: int  # the key row within its edit
    piece: LowRankDelta
    word_end: bool  # whether its target was extended to end the answer's word (`Scope.edit_forms`)

    def fits(self, book: Codebook, r: int) -> bool:
        """Whether key row r of `book` is the row it was made for."""
        return self.edit_id == book.owner[r] and r - book.owner.index(self.edit_id) == self.row


@dataclass(frozen=True)
class Ask:
    """What a generation selects its scoped edit by: its question, the form it is asked in (PLAIN or CHAT), the
    codebook it reads, taken once for its whole life, and the piece computed for its wording, if any."""

    text: str
    form: str
    book: Codebook
    worded: Worded | None = None


@dataclass(frozen=True)
class RowDeltas:
    """The deltas of a batch's rows, stacked for one batched product per edited layer: by layer name, the rows that
    carry a delta for it, and their factors as down (n, in, R) and up (n, R, out) in the orientation of the layer's
    input, out[rows] += (x[rows] @ down) @ up. Ranks are zero-padded to the largest: a zero rank adds nothing."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class RelationCheck:
    """A second test of a selection, on the same key: whether the prompt asks the edit's relation, not only about
    its subject. The scope's key is dominated by the subject, so another question about the edited subject ("John
    Stofa, who holds a citizenship from") selected the edit ("John Stofa plays in the position of" -> midfielder)
    for 0.70 of CounterFact dev records, and its reply then said "midfielder". `map` (k, d) takes a unit key to the
    directions in which another question about the same subject differs from the edit's and another wording of the
    edit's question does not (`fit_relation`); a prompt selects an edit only where their images meet at cosine >=
    `radius` too.

    Stored keys are unit whitened states (`Scope._unit`), and a cosine ignores scale, so `map` acts on them
    directly: it is the fitted projection of centred states times the inverse whitening (`Scope.relation_check`).
    Logged edits then need nothing new, and a log replays under any check."""

    map: torch.Tensor  # (k, d)
    radius: float

    def keys(self, keys: torch.Tensor) -> torch.Tensor:
        """(n, k) unit relation keys of (n, d) unit keys."""
        return _normed(keys.float() @ self.map.T)


def words_of(text: str) -> frozenset[str]:
    """The words of a text, lower-cased: what `WordCheck` compares."""
    return frozenset(re.findall(r"\w+", text.lower()))


@dataclass(frozen=True)
class WordCheck:
    """A second way into an edit's scope, by its words: a prompt that names every rare word of an edit's question
    may select the edit from cosine `radius`, below the edit's own radius. A paraphrase that misses its edit's
    radius almost always still names the edit's subject ("Jim Beam is headquartered in" for the edit of "The
    headquarter of Jim Beam is located in"); a neighbour (another subject, the same relation) never does. Another
    question about the same subject does too: the relation check (`RelationCheck`) still applies and keeps it out.
    A word is rare unless it is in `common`, the words that more than a small share of the bank's questions
    contain (`fit_words`).

    Keys only, first 500 dev records per set, each edit alone, with the shipped relation check
    (weights/experiments/word_check.py): CounterFact paraphrases selecting their edit 0.859 -> 0.954 at radius
    0.4, neighbours 0.013 -> 0.014, other questions about the subject 0.192 -> 0.217; zsRE rephrases
    0.962 -> 0.976."""

    common: frozenset[str]
    radius: float

    def rare(self, text: str) -> frozenset[str]:
        return words_of(text) - self.common


def fit_words(prompts: list[str], max_share: float = 0.002) -> frozenset[str]:
    """`WordCheck.common` from a bank of questions: the words that more than `max_share` of them contain."""
    texts = list(dict.fromkeys(prompts))
    df: dict[str, int] = {}
    for t in texts:
        for w in words_of(t):
            df[w] = df.get(w, 0) + 1
    return frozenset(w for w, n in df.items() if n > max_share * len(texts))


@dataclass(frozen=True)
class Codebook:
    """The stored edits at one moment: never changed, only replaced (`Scope.add`/`remove` build a new one). A
    request that took the codebook once uses that one for its whole life, however many edits land meanwhile, so
    scoped generation needs no lock and always sees one whole log version."""

    keys: torch.Tensor  # (n_keys, d), unit rows
    owner: tuple[str, ...]  # edit id of each key row
    row_pieces: tuple[dict[str, LowRankDelta], ...]  # what each key row applies, by form (`Scope.pieces`)
    row_targets: tuple[str | None, ...]  # the answer each key row installs (None: not stored)
    row_word_end: tuple[bool, ...]  # whether each key row's delta also says the token that ends the answer's word
    deltas: MappingProxyType  # edit id -> its scoped delta; insertion order = age
    row_radius: torch.Tensor  # (n_keys,) each key row's own radius (`Scope.radii`), floored by the scope's; -inf: none
    relation: RelationCheck | None = None  # a second check a selection must also pass (`RelationCheck`)
    rel_keys: torch.Tensor | None = None  # (n_keys, k) each key row's relation key, with `relation`
    words: WordCheck | None = None  # a second way in, by the edit's rare words (`WordCheck`)
    row_words: tuple[frozenset[str], ...] = ()  # each key row's rare words (empty: none, or no `words`)

    @classmethod
    def empty(cls, dim: int, relation: RelationCheck | None = None, words: WordCheck | None = None) -> Codebook:
        rel_keys = None if relation is None else torch.zeros(0, relation.map.shape[0])
        return cls(torch.zeros(0, dim), (), (), (), (), MappingProxyType({}), torch.zeros(0), relation, rel_keys,
                   words)

    def cleared(self) -> Codebook:
        """No edit, and this codebook's checks."""
        return Codebook.empty(self.keys.shape[1], self.relation, self.words)

    def added(self, edit_id: str, delta: LowRankDelta) -> Codebook:
        if delta.key is None:
            raise ValueError("a scoped edit needs its key (LowRankDelta.key)")
        targets = json.loads(delta.meta["targets"]) if "targets" in delta.meta else []
        n = len(delta.key)
        # Edits logged before their prompts were (meta["prompts"]) are selected by their keys alone.
        prompts = json.loads(delta.meta.get("prompts", "[]"))
        rare = [self.words.rare(p) for p in prompts] if self.words is not None and len(prompts) == n else []
        return Codebook(torch.cat([self.keys, delta.key.float()]), self.owner + (edit_id,) * n,
                        self.row_pieces + tuple(Scope.pieces(delta)),
                        self.row_targets + tuple(targets if len(targets) == n else [None] * n),
                        self.row_word_end + _word_end_rows(delta.meta.get("word_end"), n),
                        MappingProxyType({**self.deltas, edit_id: delta}),
                        torch.cat([self.row_radius, _radius_rows(delta.meta.get("radii"), n)]), self.relation,
                        None if self.relation is None else
                        torch.cat([self.rel_keys, self.relation.keys(delta.key)]),
                        self.words, self.row_words + tuple(rare or [frozenset()] * n))

    def without(self, *edit_ids: str) -> Codebook:
        """Without these edits (KeyError if one is not stored)."""
        gone = set(edit_ids)
        if not gone <= self.deltas.keys():
            raise KeyError(f"not in the codebook: {sorted(gone - self.deltas.keys())}")
        keep = [i for i, o in enumerate(self.owner) if o not in gone]
        return Codebook(self.keys[keep], tuple(self.owner[i] for i in keep),
                        tuple(self.row_pieces[i] for i in keep), tuple(self.row_targets[i] for i in keep),
                        tuple(self.row_word_end[i] for i in keep),
                        MappingProxyType({k: v for k, v in self.deltas.items() if k not in gone}),
                        self.row_radius[keep], self.relation, None if self.relation is None else self.rel_keys[keep],
                        self.words, tuple(self.row_words[i] for i in keep))

    def nearest(self, keys: torch.Tensor, radius: float, texts: list[str] | None = None) -> list[int | None]:
        """Per prompt key: the most similar key row at cosine >= its radius, the larger of `radius` and the row's
        own, or at cosine >= the `words` check's radius where the prompt's text (texts[b]) names every rare word of
        the row's question; and whose relation key the prompt's relation key meets at cosine >= the check's radius,
        if the codebook has a `relation` check (ties: the newest)."""
        if not self.owner:  # also: no keys computed, as nothing could be selected
            return [None] * len(keys)
        sim = keys.float() @ self.keys.T  # (B, n_keys)
        limit = self.row_radius.clamp(min=radius).expand_as(sim)
        if self.words is not None and texts is not None:
            limit = limit.clone()
            asked = [words_of(t) for t in texts]
            for b, r in ((sim >= self.words.radius) & (sim < limit)).nonzero().tolist():
                if self.row_words[r] and self.row_words[r] <= asked[b]:
                    limit[b, r] = self.words.radius
        outside = sim < limit
        if self.relation is not None:
            outside |= self.relation.keys(keys) @ self.rel_keys.T < self.relation.radius
        sim = sim.masked_fill(outside, float("-inf"))
        # Later rows are newer: flip so that argmax's first maximum is the newest.
        best = sim.flip(1).argmax(1)
        rows = len(self.owner) - 1 - best
        return [r if sim[b, r] > float("-inf") else None for b, r in enumerate(rows.tolist())]


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


class Scope:
    """Keys of prompts and the edits they select. Thread-scoped like the capture hooks: a forward in another
    thread sees no scoped edit unless that thread selected one."""

    def __init__(self, cfg: ScopeConfig, layers: list[EditedLayer], center: torch.Tensor,
                 proj: torch.Tensor | None = None, bank: torch.Tensor | None = None,
                 relation: torch.Tensor | None = None, common: frozenset[str] | None = None) -> None:
        self.cfg, self.layers, self.center = cfg, layers, center
        # (d, d) applied to the centred state before normalising: a whitening that shrinks the directions in which
        # a question's wordings differ (`fit_scope`). None: the centred state itself.
        self.proj = proj
        # (M, d) unit keys of other questions (training edit prompts, `with_bank`) that no new edit's scope may
        # cover (`radii`). None: every edit has the scope's radius.
        self.bank = bank
        # (k, d) applied to the centred state: the relation projection of `RelationCheck` (`fit_relation`). None,
        # or cfg.relation_radius None: no relation check.
        self.relation = relation
        # The words too common to name an edit (`WordCheck`, `fit_words`). None, or cfg.word_radius None: edits are
        # selected by their keys alone.
        self.common = common
        # replaced whole by add/remove, never changed in place
        self.codebook = self.empty()
        self._local = threading.local()
        self._handles: list = []
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> pooled state (`_pooled_prompts`)
        self._memo_lock, self._memo_model = threading.Lock(), None
        # (model, editor, compression, form, text, target) -> `worded`'s piece and word end (None: not finite): all
        # it depends on (the edit's key only selects). The cache lock guards the dict; the work lock lets one piece
        # be computed at a time, while cache hits go on.
        self._worded: OrderedDict[tuple, tuple[LowRankDelta, bool] | None] = OrderedDict()
        self._worded_lock, self._wording_lock = threading.Lock(), threading.Lock()

    # The current codebook's fields, for reading.
    keys = property(lambda self: self.codebook.keys)
    owner = property(lambda self: self.codebook.owner)
    row_pieces = property(lambda self: self.codebook.row_pieces)
    row_targets = property(lambda self: self.codebook.row_targets)
    deltas = property(lambda self: self.codebook.deltas)

    # ---- keys ----------------------------------------------------------------------------------------------

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

    def _pooled_prompts(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
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
        return self._unit(self._pooled_prompts(model, tok, prompts))

    def candidate_keys(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase,
                       prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Keys of every prompt and of each of its sentence suffixes (the prompt without its first sentence,
        without its first two, ...), and which prompt each row is of. A question asked after an unrelated sentence
        ("It is found in Namibia. Frankie Albert, the") is then matched by its last sentence alone."""
        pooled, owner = self._candidate_pooled(model, tok, prompts)
        return self._unit(pooled), owner

    def own_keys(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                 own: torch.Tensor) -> torch.Tensor:
        """(B, d): per prompt, its candidate key (see `candidate_keys`) most similar to own[b], the key of the edit
        it is asked against: the key `request_keys` gives it when that edit is the only one stored."""
        keys, owner = self.candidate_keys(model, tok, prompts)
        return keys[_best_candidates((keys * own[torch.tensor(owner)]).sum(1), owner, len(prompts))]

    def _candidate_pooled(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase,
                          prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        texts, owner = [], []
        for i, p in enumerate(prompts):
            for text in sentence_suffixes(p):
                texts.append(text)
                owner.append(i)
        return self._pooled_prompts(model, tok, texts), owner

    def request_keys(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                     book: Codebook | None = None) -> torch.Tensor:
        """(B, d): per prompt, the candidate key (see `candidate_keys`) most similar to a stored edit key; the
        whole prompt's key when nothing is stored or it is the best (ties go to the whole prompt). Measured on 200
        CounterFact train records in one codebook: paraphrases selecting their own edit 0.03 -> 0.56, neighbours
        captured 6.2% -> 6.8%; zsRE unchanged (0.93 rephrases, no locality prompt captured)."""
        book = book or self.codebook
        keys, owner = self.candidate_keys(model, tok, prompts)
        best = (keys @ book.keys.T).max(1).values if book.owner else torch.zeros(len(keys))
        return keys[_best_candidates(best, owner, len(prompts))]

    def keys_for(self, model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, d) unit keys, centred."""
        return self._unit(self._pooled(model, input_ids, attention_mask))

    def relation_check(self) -> RelationCheck | None:
        """The codebook's `RelationCheck`: the relation projection carried over to unit keys (times the inverse
        whitening), or None without a projection or a radius."""
        if self.relation is None or self.cfg.relation_radius is None:
            return None
        carry = self.relation if self.proj is None else self.relation @ torch.linalg.inv(self.proj.double()).float()
        return RelationCheck(carry, self.cfg.relation_radius)

    def word_check(self) -> WordCheck | None:
        """The codebook's `WordCheck`, or None without common words or a radius."""
        if self.common is None or self.cfg.word_radius is None:
            return None
        return WordCheck(self.common, self.cfg.word_radius)

    def empty(self) -> Codebook:
        """A codebook with no edit and this scope's checks."""
        return Codebook.empty(self.center.numel(), self.relation_check(), self.word_check())

    def with_relation(self, relation: torch.Tensor | None, radius: float | None) -> Scope:
        """This scope with this relation check (None: none), its stored edits kept."""
        self.relation, self.cfg.relation_radius = relation, radius
        return self._rebuilt()

    def with_words(self, common: frozenset[str] | None, radius: float | None) -> Scope:
        """This scope with this word check (None: none), its stored edits kept."""
        self.common, self.cfg.word_radius = common, radius
        return self._rebuilt()

    def _rebuilt(self) -> Scope:
        stored, self.codebook = self.codebook.deltas, self.empty()
        for edit_id, delta in stored.items():
            self.add(edit_id, delta)
        return self

    def _unit(self, pooled: torch.Tensor) -> torch.Tensor:
        return _normed(self._centred(pooled))

    def _centred(self, pooled: torch.Tensor) -> torch.Tensor:
        k = pooled - self.center
        return k if self.proj is None else k @ self.proj.T

    @classmethod
    def fit(cls, model: PreTrainedModel, tok: PreTrainedTokenizerBase, layers: list[EditedLayer], prompts: list[str],
            cfg: ScopeConfig | None = None) -> Scope:
        """The centre is the mean over generic prompts: without it every prompt's mean hidden state shares one
        large component and all cosines sit near 1."""
        scope = cls(cfg or ScopeConfig(), layers, torch.zeros(model.config.hidden_size))
        scope.center = scope._pooled_prompts(model, tok, prompts).double().mean(0).float()
        return scope

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"center": self.center.contiguous()}
        if self.proj is not None:
            tensors["proj"] = self.proj.contiguous()
        if self.bank is not None:
            tensors["bank"] = self.bank.half().contiguous()
        if self.relation is not None:
            tensors["relation"] = self.relation.contiguous()
        save_file(tensors, path / WEIGHTS_FILE, metadata={"format": "mend-scope"})
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2, sort_keys=True) + "\n")
        if self.common is not None:
            (path / WORDS_FILE).write_text(json.dumps({"common": sorted(self.common)}, indent=0) + "\n")
        else:
            (path / WORDS_FILE).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path, layers: list[EditedLayer]) -> Scope:
        path = Path(path)
        cfg = ScopeConfig(**json.loads((path / CONFIG_FILE).read_text()))
        tensors = load_file(path / WEIGHTS_FILE)
        proj = tensors["proj"].float() if "proj" in tensors else None
        bank = tensors["bank"].float() if "bank" in tensors else None
        relation = tensors["relation"].float() if "relation" in tensors else None
        common = frozenset(json.loads((path / WORDS_FILE).read_text())["common"]) if (path / WORDS_FILE).exists() \
            else None
        return cls(cfg, layers, tensors["center"].float(), proj, bank, relation, common)

    def with_bank(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str]) -> Scope:
        """This scope with a bank of these prompts' keys, one row per distinct prompt: questions other than any edit
        yet to come."""
        self.bank = self.prompt_keys(model, tok, list(dict.fromkeys(prompts))).half().float()  # as saved
        return self

    def radii(self, keys: torch.Tensor) -> list[float] | None:
        """Per edit key: its own radius, `bank_margin` above its nearest bank question, so that its scope covers
        none of them (the scope's radius still floors it). Measured on 300 CounterFact dev records, each edit alone,
        with 2,000 train prompts as the bank: neighbour prompts selecting the edit 0.026 -> 0.017 and records with
        any neighbour selecting it 0.083 -> 0.067, paraphrases selecting it unchanged at 0.853; zsRE rephrases 0.977
        -> 0.973 (weights/experiments/per_edit_radius.py). None without a bank."""
        if self.bank is None or not len(self.bank):
            return None
        # A bank row that is the edit's own question is not another question: counted, an edit of a bank question
        # got a radius above its own prompt's cosine (1 + margin) and no request could select it.
        sim = keys.float() @ self.bank.T
        nearest = sim.masked_fill(sim >= OWN_WORDING, float("-inf")).max(1).values + self.cfg.bank_margin
        return [round(float(r), 6) for r in nearest.clamp(min=self.cfg.radius)]

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
    def edit_forms(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, requests: list[EditRequest],
                   prefix: PrefixCache | None = None) -> list[EditRequest]:
        """Each request in every form (`in_forms`), and with `end_words`, where the unedited model would run the
        answer on into a longer word (its favourite token after prompt + target, in any form, begins with a letter
        or a digit: " Oxford" -> "shire"), every form's target extended by the token that ends the word, the one it
        likes best there among the tokens that begin with neither (" Oxford" -> " Oxford.").

        Measured on 150 zsRE train records with tuning, extending every target: greedy replies to the edit prompt
        said the answer in 0.94 of edits without it and 0.98 with it, in chat 0.93 and 0.98; the rephrases 0.79
        either way (weights/experiments/refined_step.py). But on 40 CounterFact train records CounterFact's
        paraphrases said it in 0.60 instead of 0.69 (`mend eval --generate`): an answer that the model already
        ends by itself (" Spanish" -> " language") gains nothing from the extra token, and the delta trained to
        say it reaches other wordings less well. Hence only the answers that would run on."""
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
        pooled, owner = self._candidate_pooled(model, tok, keyed_by)
        keys = self._unit(pooled[[owner.index(i) for i in range(len(keyed_by))]])
        prefix = prefix or PrefixCache(model, first_block(self.layers))
        scaled = self._stepped(model, tok, pieces, [keys[i // n_forms][None] for i in range(len(pieces))], requests,
                               prefix)
        radii = self.radii(keys)
        # The prompts keyed by travel with the edit: the word check (`WordCheck`) reads their rare words when the
        # codebook takes it, so common words can be refitted under a running log.
        meta = {**pieces[0].meta, "scope_scale": json.dumps([step for _, step in scaled]),
                "prompts": json.dumps(keyed_by),
                "targets": json.dumps(answers if answers is not None else [r.target for r in requests[::n_forms]]),
                "key_ranks": json.dumps({n: [d.factors[n][0].shape[1] for d, _ in scaled] for n in pieces[0].factors})}
        if forms != (PLAIN,):
            meta["forms"] = json.dumps(list(forms))
        if radii is not None:
            meta["radii"] = json.dumps(radii)
        if answers is not None and self.cfg.end_words:
            # Per edit: whether its target was extended to end its word (the plain form's target is then longer
            # than the answer): only those wait for the word's end before their release.
            meta["word_end"] = json.dumps([int(r.target != a) for r, a in zip(requests[::n_forms], answers)])
        return LowRankDelta(LowRankDelta.stack([d for d, _ in scaled]).factors, meta, keys)

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

        Why: 19 of 150 zsRE train edits miss their own prompt at every step up to 8 and also at 16 (no larger step
        helps), and re-running MEND on the edited model fixed 1 of them. What they miss is the direction of the
        output change: mostly the later tokens of a multi-word answer ("Hammanu Miruza" for "Hammanu Mirza").
        Tuned, 16 of the 19 took (5.7 steps each on average), and greedy replies to the edit prompt said the answer
        in 0.94 of the 150 edits instead of 0.87 (weights/experiments/refined_step.py). Only the edits that miss pay
        for it, and a scoped delta acts only inside its radius."""
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

    def worded(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, editor, text: str, form: str,
               book: Codebook | None = None, rel_tol: float = 0.0, dtype: torch.dtype | None = None) -> Worded | None:
        """For a request asking `text` in `form`: when it selects a stored edit of `book` in a wording other than
        the edit's own, that edit's piece computed afresh for this wording, as `compute` computes an edit's (MEND's
        delta of `text` -> the edit's target in this form, its word end, step and tuning on this wording). None when
        it selects nothing, selects the edit's own wording, or the edit stores no target.

        Why: a piece is made to give its target on its own prompt, and another wording of the question selects the
        edit far more often than the piece makes it answer: on the first 1,000 dev records, 0.958 of zsRE rephrases
        and 0.851 of CounterFact paraphrases select their own edit, while 0.872 and 0.666 of the replies said the
        new answer (500 records through the service). The scope already decided that the request asks this edit's
        question, so the edit is made for the words it was asked in: on the same 500 records, 0.954 and 0.857 then
        said it, and no other reply's verdict changed. The first request in a wording pays for one edit of one
        form; the piece is kept (WORDED_PIECES) for the next."""
        book = book or self.codebook
        if not book.owner or not text.strip():
            return None
        key = self.request_keys(model, tok, [text], book)[0]
        r = book.nearest(key[None], self.cfg.radius, [text])[0]
        # Own words: the whole prompt, not its best sentence suffix (a preamble before the edit prompt is other words).
        if r is None or book.row_targets[r] is None or \
                float(self.prompt_keys(model, tok, [text])[0] @ book.keys[r]) >= OWN_WORDING:
            return None
        edit_id, target = book.owner[r], book.row_targets[r]
        row, memo = r - book.owner.index(edit_id), (id(model), id(editor), rel_tol, dtype, form, text, target)
        with self._wording_lock:  # one piece at a time: an edit's forwards take the cores anyway
            with self._worded_lock:
                if memo in self._worded:  # also computed by a request that held the work lock before this one
                    self._worded.move_to_end(memo)
                    made = self._worded[memo]
                    return made and Worded(edit_id, row, *made)
            forms = forms_of(tok)
            request = in_forms(tok, [EditRequest(text, target)])[forms.index(form) if form in forms else 0]
            prefix = PrefixCache(model, first_block(self.layers))
            ended = self._ended(model, tok, [request], 1, prefix)
            piece = editor.compute_deltas(model, tok, ended, prefix=prefix)[0]
            if rel_tol or dtype:
                piece = piece.compressed(rel_tol, dtype)
            (piece, _), = self._stepped(model, tok, [piece], [key[None]], ended, prefix)
            # A non-finite piece would poison the whole decoding batch: the request gets the stored piece instead.
            made = (LowRankDelta(piece.factors), ended[0].target != request.target) if piece.finite() else None
            with self._worded_lock:
                self._worded[memo] = made
                while len(self._worded) > WORDED_PIECES:
                    self._worded.popitem(last=False)
        return made and Worded(edit_id, row, *made)

    @staticmethod
    def pieces(delta: LowRankDelta) -> list[dict[str, LowRankDelta]]:
        """What each key row applies, by form: its own pieces, or the whole delta for every key (and form) when the
        delta has no meta["key_ranks"] (logs written before pieces, and deltas scoped by hand)."""
        if "key_ranks" not in delta.meta:
            return [{PLAIN: delta}] * len(delta.key)
        forms = json.loads(delta.meta.get("forms", json.dumps([PLAIN])))
        ranks = json.loads(delta.meta["key_ranks"])
        flat = [{} for _ in range(len(delta.key) * len(forms))]
        for name, (left, right) in delta.factors.items():
            for i, pair in enumerate(zip(left.split(ranks[name], 1), right.split(ranks[name], 0))):
                flat[i][name] = pair
        return [{form: LowRankDelta(flat[i * len(forms) + j]) for j, form in enumerate(forms)}
                for i in range(len(delta.key))]

    def _takes(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, deltas: list[LowRankDelta],
               requests: list[EditRequest], prefix: PrefixCache) -> list[bool]:
        """Per request: is its target the teacher-forced argmax with its own delta (row i applies deltas[i])."""
        with self._attached(model), self.acting(self.stacked(deltas)):
            return [s.exact for s in score_targets(model, tok, requests, prefix=prefix)]

    # ---- the codebook --------------------------------------------------------------------------------------

    def add(self, edit_id: str, delta: LowRankDelta) -> None:
        self.codebook = self.codebook.added(edit_id, delta)

    def remove(self, *edit_ids: str) -> None:
        """Forget these edits, all or none (KeyError, nothing forgotten, if one is not stored)."""
        self.codebook = self.codebook.without(*edit_ids)

    def clear(self) -> None:
        self.codebook = self.empty()

    def select(self, keys: torch.Tensor, book: Codebook | None = None,
               texts: list[str] | None = None) -> list[str | None]:
        """Per prompt key (of the prompt texts[b], if given): the edit whose key it selects (`Codebook.nearest`), or
        None."""
        book = book or self.codebook
        return [None if r is None else book.owner[r] for r in book.nearest(keys, self.cfg.radius, texts)]

    # ---- applying ------------------------------------------------------------------------------------------

    def attach(self, model: PreTrainedModel) -> None:
        """Hooks on the edited modules that add each row's selected delta, and on the block after the key block
        that keys a prompt on its way (`choosing`); they do nothing unless a thread opened `acting`, `applying`
        or `choosing`."""
        for layer in self.layers:
            mod = model.get_submodule(layer.module)
            self._handles.append(mod.register_forward_hook(self._hook(layer)))
        _, blocks = find_blocks(model)
        self._handles.append(blocks[self.cfg.key_block + 1].register_forward_pre_hook(self._keying, with_kwargs=True))

    @contextlib.contextmanager
    def _attached(self, model: PreTrainedModel):
        """The hooks attached for a check made while computing an edit: the service's own (already attached) if
        there are, else attached for this check and removed after."""
        if self._handles:
            yield
            return
        self.attach(model)
        try:
            yield
        finally:
            self.detach()

    def _keying(self, _mod, args, kwargs=None) -> None:
        # kwargs=None: a with_kwargs hook can be called without them while it is being registered
        # (editor_core.hooks._ThreadHooks).
        keying = getattr(self._local, "keying", None)
        if keying is not None:
            self._local.keying = None  # the prompt's own prefill only
            keying(args[0] if args else kwargs["hidden_states"])

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: EditedLayer):
        def hook(_mod, args, out):
            deltas = getattr(self._local, "rows", None)
            stacked = None if deltas is None else deltas.layers.get(layer.name)
            if stacked is None:
                return None
            rows, down, up = stacked
            x = args[0]  # (B, T, in)
            rows = rows.to(x.device)
            return out.index_add(0, rows, torch.bmm(torch.bmm(x[rows], down.to(x)), up.to(x)))

        return hook

    def stacked(self, pieces: list[LowRankDelta | None]) -> RowDeltas | None:
        """Row b of a batch adds pieces[b] (None: nothing), stacked for the hooks (`RowDeltas`); built once for a
        batch, not at every forward."""
        layers = {}
        for layer in self.layers:
            rows = [(b, p.factors[layer.name]) for b, p in enumerate(pieces)
                    if p is not None and layer.name in p.factors]
            if not rows:
                continue
            rank = max(left.shape[1] for _, (left, _) in rows)
            down = torch.zeros(len(rows), layer.in_features, rank)
            up = torch.zeros(len(rows), rank, layer.out_features)
            for i, (_, (left, right)) in enumerate(rows):
                # ΔW = left @ right in the weight's storage orientation: (out, in) for Linear, (in, out) for Conv1D.
                d, u = (left, right) if layer.transposed else (right.T, left.T)
                down[i, :, : d.shape[1]], up[i, : u.shape[0]] = d, u
            layers[layer.name] = (torch.tensor([b for b, _ in rows]), down, up)
        return RowDeltas(layers) if layers else None

    @contextlib.contextmanager
    def acting(self, deltas: RowDeltas | None):
        """Within this context, this thread's forwards add `deltas` (`stacked`), row by row."""
        saved, self._local.rows = getattr(self._local, "rows", None), deltas
        try:
            yield
        finally:
            self._local.rows = saved

    @contextlib.contextmanager
    def applying(self, keys: torch.Tensor, form: str = PLAIN, book: Codebook | None = None,
                 worded: list[Worded | None] | None = None, texts: list[str] | None = None):
        """Within this context, this thread's forwards of a batch whose row b has key keys[b] add each row's
        selected edit (see `select`; texts[b]: the row's prompt, for the word check) of `book` (default: the current
        codebook), its piece for `form` (the plain one if it has none), or worded[b]'s piece where that was made for
        the row selected. Yields the `Selection` (its edit ids). For teacher-forced scoring: a generation selects
        with `choose`, and releases its edit once the answer is said."""
        book = book or self.codebook
        rows = book.nearest(keys, self.cfg.radius, texts)
        worded = worded or [None] * len(rows)
        pieces = [None if r is None else w.piece if w is not None and w.fits(book, r)
                  else book.row_pieces[r].get(form, book.row_pieces[r][PLAIN]) for r, w in zip(rows, worded)]
        with self.acting(self.stacked(pieces)):
            yield Selection([None if r is None else book.owner[r] for r in rows],
                            [None if r is None else book.row_targets[r] for r in rows])

    def choose(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, asks: list[tuple[str, str]],
               book: Codebook | None = None) -> list[Choice | None]:
        """Per generation request, its question `text` asked in `form` (PLAIN or CHAT): the edit of `book`
        (default: the current codebook) that the question selects (`_choice`), or None. Each question is keyed
        alone, as in a request of its own."""
        book = book or self.codebook
        return [self._choice(tok, Ask(text, form, book), self.request_keys(model, tok, [text], book)[0])
                if book.owner and text.strip() else None for text, form in asks]

    def _choice(self, tok: PreTrainedTokenizerBase, ask: Ask, key: torch.Tensor) -> Choice | None:
        """The edit the request key `key` selects in the ask's codebook, its piece for the ask's form, and a
        selection that releases it once its answer is said or has gone wrong (the target's token count tells
        when)."""
        book = ask.book
        r = book.nearest(key[None], self.cfg.radius, [ask.text])[0]
        if r is None:
            return None
        target = book.row_targets[r]
        length = None if target is None else len(tok(" " + target.strip(), add_special_tokens=False)["input_ids"])
        piece, word_end = book.row_pieces[r].get(ask.form, book.row_pieces[r][PLAIN]), book.row_word_end[r]
        if ask.worded is not None and ask.worded.fits(book, r):  # made for this wording of the edit selected
            piece, word_end = ask.worded.piece, ask.worded.word_end
        return Choice(piece, Selection([book.owner[r]], [target], [length], strict=ask.form == PLAIN,
                                       word_end=word_end))

    def keyed_on_the_way(self, tok: PreTrainedTokenizerBase, ask: Ask, ids: list[int]) -> bool:
        """Whether the prefill of prompt `ids` computes the ask's request key on its way: the prompt is the plain
        question itself, of one sentence (no suffix candidates), and every edited layer lies above the key block,
        so no edit changes what the key is pooled from."""
        return (ask.form == PLAIN and sentence_suffixes(ask.text) == [ask.text]
                and self.cfg.key_block < first_block(self.layers)
                and tok(ask.text)["input_ids"] == ids)

    @contextlib.contextmanager
    def choosing(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, asks: list[Ask | None],
                 contexts: list[list[int]], mask: torch.Tensor):
        """For one prefill in this thread of a batch of generations, left-padded (`mask`), row b the tokens
        contexts[b] of a request that selects its edit by asks[b] (None: nothing to select): the edit each ask
        selects acts on that forward, and the yielded list holds each row's `Choice` (or None) after it. A prompt
        that is its own plain question (`keyed_on_the_way`) is keyed inside the prefill, at the input of block
        key_block + 1, before any edited block runs: no forward of its own, where keying first costs a third of
        one. The other asks are keyed first (`request_keys`), and each applies the piece
        made for its wording (`Ask.worded`) when it selects the edit that piece was made for."""
        chosen: list[Choice | None] = [None] * len(asks)
        live = [b for b, a in enumerate(asks) if a is not None and a.book.owner and a.text.strip()]
        on_the_way = [b for b in live if self.keyed_on_the_way(tok, asks[b], contexts[b])]
        for b in live:
            if b not in on_the_way:
                chosen[b] = self._choice(tok, asks[b], self.request_keys(model, tok, [asks[b].text], asks[b].book)[0])

        def keying(hidden: torch.Tensor) -> None:
            keys = self._unit(self._pool(hidden, mask))
            for b in on_the_way:
                chosen[b] = self._choice(tok, asks[b], keys[b])
            self._local.rows = self.stacked([c and c.piece for c in chosen])

        with self.acting(self.stacked([c and c.piece for c in chosen])):
            self._local.keying = keying if on_the_way else None
            try:
                yield chosen
            finally:
                missed, self._local.keying = self._local.keying is not None, None
        if missed:
            raise RuntimeError("the prefill never reached the key block: are the scope's hooks attached?")

    def applying_to(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                    form: str = PLAIN, book: Codebook | None = None, worded: list[Worded | None] | None = None):
        """`applying` with the request keys of these prompts."""
        book = book or self.codebook
        keys = self.request_keys(model, tok, prompts, book) if book.owner else torch.zeros(len(prompts), 0)
        return self.applying(keys, form, book, worded, prompts)

    def fingerprint(self) -> str:
        # These (and the bank) only pick the delta of new edits, and the log stores each delta as it was picked
        # (with meta["word_end"] and meta["radii"]), so a log replays the same under any of them. The relation check
        # reads the stored keys as they are (`RelationCheck`), the word check the stored prompts (`WordCheck`): the
        # same log under any check, or none.
        cfg = {k: v for k, v in asdict(self.cfg).items()
               if k not in ("max_scale", "tune_steps", "tune_lr", "end_words", "bank_margin", "relation_radius",
                            "word_radius")}
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        h.update(self.center.contiguous().numpy().tobytes())
        if self.proj is not None:  # stored keys live in the projected space: another projection, another log
            h.update(self.proj.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def off(self):
        """Within this context, this thread's forwards add no scoped edit."""
        return self.acting(None)


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


def _radius_rows(radii: str | None, n: int) -> torch.Tensor:
    # Deltas logged before banks (no meta["radii"]) have the scope's radius alone.
    rows = json.loads(radii) if radii else []
    return torch.tensor(rows if len(rows) == n else [float("-inf")] * n, dtype=torch.float32)


def _word_end_rows(flags: str | None, n: int) -> tuple[bool, ...]:
    # "1": every row's target was extended (logs written before only the answers that run on were).
    rows = [True] * n if flags == "1" else [bool(f) for f in json.loads(flags)] if flags else [False] * n
    return tuple(rows) if len(rows) == n else (False,) * n


def key_block_candidates(model: PreTrainedModel) -> list[int]:
    """Blocks from a sixth to two thirds of the depth: low blocks see the wording, high ones mostly the next token."""
    _, blocks = find_blocks(model)
    n = len(blocks)
    return sorted({min(max(round(n * f), 0), n - 2) for f in (1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3)})


def _normed(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


WHITENING_RIDGES = (0.01, 0.03, 0.1, 0.3, 1.0)  # tried by fit_scope, x the mean variance


@dataclass
class _KeySet:
    """Pooled states of records' prompts, for keys under any projection: edit prompts, the first two rephrases
    and the first three locality prompts, each rephrase and locality prompt with its sentence-suffix candidates
    (as `request_keys` keys a request)."""

    edits: torch.Tensor  # (n, d)
    reph: torch.Tensor  # (m, d) candidates
    reph_of: list[int]  # the rephrase each candidate is of
    reph_record: list[int]  # the record each rephrase is of
    loc: torch.Tensor
    loc_of: list[int]
    loc_record: list[int]

    @classmethod
    def of(cls, scope: Scope, model: PreTrainedModel, tok: PreTrainedTokenizerBase, records: list,
           with_loc: bool = True) -> _KeySet:
        reph = [(i, p) for i, r in enumerate(records) for p in r.rephrases[:2]]
        loc = [(i, q.prompt) for i, r in enumerate(records) for q in r.loc[:3]] if with_loc else []
        rp, r_of = scope._candidate_pooled(model, tok, [p for _, p in reph])
        lp, l_of = (scope._candidate_pooled(model, tok, [p for _, p in loc]) if loc
                    else (torch.zeros(0, len(scope.center)), []))
        return cls(scope._pooled_prompts(model, tok, [r.edit.prompt for r in records]), rp, r_of,
                   [i for i, _ in reph], lp, l_of, [i for i, _ in loc])


def _best(cands: torch.Tensor, of: list[int], n: int, edits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt (n of them, candidates rows `of`): the highest cosine of any of its candidates to any edit key,
    and that edit."""
    sim, edit = (cands @ edits.T).max(1) if len(edits) else (torch.full((len(cands),), -2.0), torch.zeros(len(cands)))
    best, which = torch.full((n,), -2.0), torch.zeros(n, dtype=torch.long)
    for j, i in enumerate(of):
        if sim[j] > best[i]:
            best[i], which[i] = sim[j], edit[j]
    return best, which


def _best_candidates(sim: torch.Tensor, of: list[int], n: int) -> torch.Tensor:
    """Per question (n of them, candidate rows `of`): the row of its candidate with the highest `sim` (the first on
    ties), as `request_keys` picks the candidate a request is keyed by."""
    best: dict[int, int] = {}
    sim = sim.tolist()
    for j, q in enumerate(of):
        if q not in best or sim[j] > sim[best[q]]:
            best[q] = j
    return torch.tensor([best[q] for q in range(n)], dtype=torch.long)


def _whitening(scope: Scope, fit: _KeySet, ridge: float) -> torch.Tensor:
    """W = (S + ridge x mean variance x I)^-1/2, S the second moment of (rephrase key - its edit's key) over the
    fit records, each rephrase by its candidate nearest its own edit: the directions in which wordings of one
    question differ, shrunk, so that what stays is what tells questions apart."""
    edits, reph = _normed(fit.edits - scope.center), _normed(fit.reph - scope.center)
    own = edits[torch.tensor([fit.reph_record[i] for i in fit.reph_of])]
    rows = _best_candidates((reph * own).sum(1), fit.reph_of, len(fit.reph_record))
    diff = (reph[rows] - own[rows]).double()
    second = diff.T @ diff / len(diff)
    second += ridge * second.trace() / len(second) * torch.eye(len(second), dtype=second.dtype)
    vals, vecs = torch.linalg.eigh(second)
    return (vecs @ torch.diag(vals.rsqrt()) @ vecs.T).float()


def fit_scope(model: PreTrainedModel, tok: PreTrainedTokenizerBase, layers: list[EditedLayer], records: list,
              cfg: ScopeConfig, loc_weight: float = 3.0, blocks: list[int] | None = None,
              radius: float | None = None, whiten: bool = True) -> tuple[Scope, dict]:
    """Fit a scope to a model on training records (`EditRecord`s with rephrases). On the first half: the centre
    (their locality prompts) and, with `whiten`, a whitening of the keys per ridge in WHITENING_RIDGES
    (`_whitening`). On the second half: the key block, the whitening (or none) and the radius that maximise
    rephrases selecting their own edit minus `loc_weight` x locality prompts selecting any, every prompt keyed
    as a request is (best of its sentence-suffix candidates) against one codebook of the half's edits. Keys are
    model-specific (which block separates facts differs from model to model), so every model gets its own fit.
    Returns the scope and, per block tried, the objective's rates, for the caller to print.

    Whitening, measured at key level on 1,000 dev records of each set in one codebook (fitted on train records,
    `weights/experiments/contrastive_keys.py`): CounterFact paraphrases selecting their own edit 0.57 -> 0.86,
    neighbours captured 14.3% -> 4.7%, paraphrases selecting a wrong edit 8.1% -> 0.4%; zsRE rephrases 0.84 ->
    0.97. Trained projections (InfoNCE, linear, low-rank, d -> 256) did no better."""
    half = len(records) // 2
    fit, cal = records[:half], records[half:]
    fit_prompts = [q.prompt for r in fit for q in r.loc[:2]]
    report = {}
    best: tuple[float, Scope] | None = None
    for block in (blocks if blocks else key_block_candidates(model)):
        scope = Scope.fit(model, tok, layers, fit_prompts, ScopeConfig(**{**asdict(cfg), "key_block": block}))
        cal_set = _KeySet.of(scope, model, tok, cal)
        options: list[tuple[float | None, torch.Tensor | None]] = [(None, None)]
        if whiten:
            fit_set = _KeySet.of(scope, model, tok, fit, with_loc=False)
            options += [(ridge, _whitening(scope, fit_set, ridge)) for ridge in WHITENING_RIDGES]
        chosen_proj = None
        for ridge, proj in options:
            scope.proj = proj
            rates = calibration_rates(scope, cal, cal_set)
            t = radius if radius is not None else max(
                (rates(t)[0] - loc_weight * rates(t)[1], t) for t in [x / 100 for x in range(20, 100)])[1]
            hits, loc_hits = rates(t)
            row = {"radius": t, "ridge": ridge, "rephrase_hits": hits, "loc_hits": loc_hits,
                   "objective": hits - loc_weight * loc_hits, "rates": rates}
            if block not in report or row["objective"] > report[block]["objective"]:
                report[block], chosen_proj = row, proj
        scope.cfg.radius, scope.proj = report[block]["radius"], chosen_proj
        chosen = report[block]
        if best is None or chosen["objective"] > best[0]:
            best = (chosen["objective"], scope)
    return best[1], report


def calibration_rates(scope: Scope, cal: list, keys: _KeySet):
    """rates(radius, kind=None) -> (share of rephrases whose best candidate key selects their own edit at >=
    radius; share of locality prompts whose best candidate selects any edit), in one codebook of the calibration
    records' edits, on the records of that kind (all if None)."""
    edits = scope._unit(keys.edits)
    reph_best, reph_edit = _best(scope._unit(keys.reph), keys.reph_of, len(keys.reph_record), edits)
    loc_best, _ = _best(scope._unit(keys.loc), keys.loc_of, len(keys.loc_record), edits)
    own = reph_edit == torch.tensor(keys.reph_record, dtype=torch.long)
    reph_kind = [cal[i].kind for i in keys.reph_record]
    loc_kind = [cal[i].kind for i in keys.loc_record]

    def rates(t: float, kind: str | None = None) -> tuple[float, float]:
        i = torch.tensor([kind in (None, k) for k in reph_kind], dtype=torch.bool)
        j = torch.tensor([kind in (None, k) for k in loc_kind], dtype=torch.bool)
        loc_rate = float((loc_best >= t)[j].float().mean()) if j.any() else 0.0
        reph_rate = float(((reph_best >= t) & own)[i].float().mean()) if i.any() else 0.0
        return reph_rate, loc_rate

    return rates


RELATION_RADII = tuple(x / 20 for x in range(-20, 20))  # tried by fit_relation, lowest first


def fit_relation(scope: Scope, model: PreTrainedModel, tok: PreTrainedTokenizerBase, records: list, k: int = 64,
                 ridge: float = 0.3, max_loss: float = 0.01) -> tuple[torch.Tensor | None, float | None, dict]:
    """The relation projection of `RelationCheck` and its radius, for this scope, from training records whose
    `extra["other_questions"]` ask their subject something else (CounterFact: other relations' templates; zsRE:
    the subject's other questions with other answers). Returns (projection, radius, report), or (None, None,
    report) when no record has such questions.

    On the first half: the generalised eigenvectors of (S_between, S_within + ridge x mean variance x I), the top
    k, each scaled by its root eigenvalue ratio, S_between the second moment of (other question's state - the
    edit's) and S_within that of (rephrase's state - the edit's), each question by its last sentence (the
    question after any preamble). On the second half, each edit alone as the scope selects it (its bank radius,
    the best sentence-suffix candidate): the highest radius at which, in every data set, the rephrases selecting
    their own edit fall at most `max_loss` below their rate with no check.

    The shipped SmolLM2 check (`mend fit-relation`: 3,000 train records per set, k 64, ridge 0.3, radius 0.55),
    keys only, first 500 dev records of each set, each edit alone (weights/experiments/relation_check.py):
    CounterFact questions asking the edited subject another relation that select the edit 0.710 -> 0.192,
    paraphrases selecting it 0.860 -> 0.859, neighbours captured 0.016 either way; zsRE rephrases 0.966 -> 0.962.
    On its own calibration half (train) at 0.55, other questions 0.697 -> 0.222; fitted on 1,000 train records per
    set with ridge 0.01 instead, 0.676 -> 0.373 at the same radius: the relation scatter wants the larger set."""
    half = len(records) // 2
    fit, cal = records[:half], records[half:]

    def states(recs: list) -> dict:
        """Pooled states of edit prompts; per rephrase and other question, each candidate's, which question it is
        of and whose record that is."""
        out = {"edit": scope._pooled_prompts(model, tok, [r.edit.prompt for r in recs])}
        for name, texts in (("own", [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]]),
                            ("same", [(i, p) for i, r in enumerate(recs) for p in r.extra.get("other_questions", [])])):
            pooled, of = scope._candidate_pooled(model, tok, [p for _, p in texts])
            out[name] = (pooled, of, [i for i, _ in texts])
        return out

    report: dict = {"k": k, "ridge": ridge}
    if not any(r.extra.get("other_questions") for r in fit) or not any(r.extra.get("other_questions") for r in cal):
        return None, None, report
    fitted = states(fit)

    def diffs(name: str) -> torch.Tensor:
        pooled, of, rec = fitted[name]
        last = {q: j for j, q in enumerate(of)}  # each question's last candidate: its last sentence
        rows = torch.tensor([last[q] for q in range(len(rec))], dtype=torch.long)
        return (pooled[rows] - fitted["edit"][torch.tensor(rec, dtype=torch.long)]).double()

    within, between = diffs("own"), diffs("same")
    sw, sb = within.T @ within / len(within), between.T @ between / len(between)
    sw = sw + ridge * sw.trace() / len(sw) * torch.eye(len(sw), dtype=sw.dtype)
    inv_l = torch.linalg.inv(torch.linalg.cholesky(sw))
    vals, vecs = torch.linalg.eigh(inv_l @ sb @ inv_l.T)
    vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
    relation = ((inv_l.T @ vecs).T * vals.clamp(min=1e-9).sqrt()[:, None]).float()

    cal_states = states(cal)
    edits = scope._unit(cal_states["edit"])
    radii = torch.tensor(scope.radii(edits) or [scope.cfg.radius] * len(cal))

    def related(pooled: torch.Tensor) -> torch.Tensor:
        return _normed((pooled - scope.center) @ relation.T)

    rel_edits = related(cal_states["edit"])

    def selected(name: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Per question: whether the scope selects its record's edit, the relation cosine of the candidate it
        selects by, and its record's data set."""
        pooled, of, rec = cal_states[name]
        rec_t = torch.tensor(rec, dtype=torch.long)
        owner = rec_t[torch.tensor(of, dtype=torch.long)]  # each candidate's record
        sim = (scope._unit(pooled) * edits[owner]).sum(1)
        rel = (related(pooled) * rel_edits[owner]).sum(1)
        rows = _best_candidates(sim, of, len(rec))
        return sim[rows] >= radii[rec_t], rel[rows], [cal[i].kind for i in rec]

    own, own_rel, own_kind = selected("own")
    same, same_rel, _ = selected("same")

    def rate(hit: torch.Tensor, rel: torch.Tensor, r: float | None, keep: list[bool] | None = None) -> float:
        ok = hit if r is None else hit & (rel >= r)
        keep_t = torch.ones(len(ok), dtype=torch.bool) if keep is None else torch.tensor(keep, dtype=torch.bool)
        return float(ok[keep_t].float().mean()) if keep_t.any() else float("nan")

    kinds = sorted(set(own_kind))
    rows = {r: {"same": rate(same, same_rel, r), **{kind: rate(own, own_rel, r, [x == kind for x in own_kind])
                                                    for kind in kinds}} for r in (None, *RELATION_RADII)}
    radius = max([r for r in RELATION_RADII
                  if all(rows[r][kind] >= rows[None][kind] - max_loss for kind in kinds)], default=None)
    report.update({"radius": radius, "rows": rows, "kinds": kinds,
                   "fit": (len(within), len(between)), "calibration": (len(own), len(same))})
    return relation, radius, report


WORD_RADII = tuple(x / 20 for x in range(2, 14))  # tried by fit_word_radius, lowest first: 0.10 .. 0.65


def fit_word_radius(scope: Scope, model: PreTrainedModel, tok: PreTrainedTokenizerBase, records: list,
                    common: frozenset[str], max_gain: float = 0.01) -> tuple[float | None, dict]:
    """The radius of `WordCheck` for these common words, from training records (never those `common` was fitted
    on). Each data set's edits are stored together, as a running log holds them (each with its bank radius, the
    relation check as the scope has it), and each question is keyed as a request is (`request_keys`): the lowest
    radius in WORD_RADII at which, in every data set, the prompts no edit may select (locality prompts: zsRE's NQ
    questions, CounterFact's neighbours; other questions about an edited subject) select one for at most
    `max_gain` more of them than with no word check. Returns (radius, report); radius None when even the highest
    radius breaks the bound.

    Stored together, not each alone: an edit whose subject's rare words another subject's name contains ("new",
    "york") captures that subject's questions only among many edits. The report's rows give, per radius (None:
    no check) and data set, the shares of `own` (rephrases selecting their own edit), `captured` (locality prompts
    selecting some edit) and `same` (other questions about a subject selecting some edit).

    SmolLM2 (`mend fit-words` on a copy of weights/smollm2: train records 4,001 to 5,000 of each set, 1,000 edits
    stored per set): 0.5. CounterFact paraphrases 0.840 with no check, 0.948 at 0.4, 0.924 at 0.5, 0.969 at 0.1;
    other questions about a subject 0.196, 0.207, 0.204, 0.208; neighbours 0.033 -> 0.034 to 0.036 at any radius.
    With 300 stored per set the same bound gives 0.1: the costs it bounds are about 0.01 at every radius, so the
    fit mostly sets the scale of a model's cosines. The shipped 0.4 is the radius measured through the service."""
    rows: dict = {None: {}, **{r: {} for r in WORD_RADII}}
    sizes: dict = {}
    for kind in sorted({r.kind for r in records}):
        recs = [r for r in records if r.kind == kind]
        edits = scope.prompt_keys(model, tok, [r.edit.prompt for r in recs])
        own_radii = scope.radii(edits) or [scope.cfg.radius] * len(recs)
        deltas = [LowRankDelta({}, {"prompts": json.dumps([r.edit.prompt]), "radii": json.dumps([own_radii[i]])},
                               edits[i:i + 1]) for i, r in enumerate(recs)]
        groups = {"own": [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]],
                  "captured": [(-1, q.prompt) for r in recs for q in r.loc[:10]],
                  "same": [(-1, p) for r in recs for p in r.extra.get("other_questions", [])]}
        keyed = {}
        for name, items in groups.items():
            if items:
                keys, of = scope.candidate_keys(model, tok, [p for _, p in items])
                best = _best_candidates((keys @ edits.T).max(1).values, of, len(items))
                keyed[name] = (items, keys[best])
        sizes[kind] = {name: len(items) for name, (items, _) in keyed.items()}
        for radius in rows:
            book = Codebook.empty(edits.shape[1], scope.relation_check(),
                                  None if radius is None else WordCheck(common, radius))
            for i, d in enumerate(deltas):
                book = book.added(str(i), d)
            row = rows[radius][kind] = {}
            for name, (items, keys) in keyed.items():
                chosen = book.nearest(keys, scope.cfg.radius, [p for _, p in items])
                hit = [c is not None and (i < 0 or c == i) for c, (i, _) in zip(chosen, items)]
                row[name] = sum(hit) / len(hit)
    base = rows[None]
    fits = [r for r in WORD_RADII if all(rows[r][k][name] <= base[k][name] + max_gain
                                          for k in base for name in ("captured", "same") if name in base[k])]
    return (fits[0] if fits else None), {"rows": rows, "max_gain": max_gain, "questions": sizes}
