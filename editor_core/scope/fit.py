"""Fitting a scope to a model: the key block, centre, whitening and radius (`mend fit-scope`), the relation check
(`mend fit-relation`) and the word check (`mend fit-words`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..delta import LowRankDelta
from ..layers import EditedLayer, find_blocks
from .codebook import Codebook, WordCheck, words_of
from .config import ScopeConfig
from .keys import best_candidates, normed
from .meta import ScopedMeta
from .scope import Scope


def fit_words(prompts: list[str], max_share: float = 0.002) -> frozenset[str]:
    """`WordCheck.common` from a bank of questions: the words that more than `max_share` of them contain."""
    texts = list(dict.fromkeys(prompts))
    df: dict[str, int] = {}
    for t in texts:
        for w in words_of(t):
            df[w] = df.get(w, 0) + 1
    return frozenset(w for w, n in df.items() if n > max_share * len(texts))


def key_block_candidates(model: PreTrainedModel) -> list[int]:
    """Blocks from a sixth to two thirds of the depth: low blocks see the wording, high ones mostly the next token."""
    _, blocks = find_blocks(model)
    n = len(blocks)
    return sorted({min(max(round(n * f), 0), n - 2) for f in (1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3)})


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
        rp, r_of = scope.candidate_pooled(model, tok, [p for _, p in reph])
        lp, l_of = (scope.candidate_pooled(model, tok, [p for _, p in loc]) if loc
                    else (torch.zeros(0, len(scope.center)), []))
        return cls(scope.pooled_prompts(model, tok, [r.edit.prompt for r in records]), rp, r_of,
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


def _whitening(scope: Scope, fit: _KeySet, ridge: float) -> torch.Tensor:
    """W = (S + ridge x mean variance x I)^-1/2, S the second moment of (rephrase key - its edit's key) over the
    fit records, each rephrase by its candidate nearest its own edit: the directions in which wordings of one
    question differ, shrunk, so that what stays is what tells questions apart."""
    edits, reph = normed(fit.edits - scope.center), normed(fit.reph - scope.center)
    own = edits[torch.tensor([fit.reph_record[i] for i in fit.reph_of])]
    rows = best_candidates((reph * own).sum(1), fit.reph_of, len(fit.reph_record))
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
    Returns the scope and, per block tried, the objective's rates, for the caller to print."""
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
    edits = scope.unit(keys.edits)
    reph_best, reph_edit = _best(scope.unit(keys.reph), keys.reph_of, len(keys.reph_record), edits)
    loc_best, _ = _best(scope.unit(keys.loc), keys.loc_of, len(keys.loc_record), edits)
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
    their own edit fall at most `max_loss` below their rate with no check. The relation scatter wants a few
    thousand records per set: fitted on fewer, the check keeps far fewer other questions out."""
    half = len(records) // 2
    fit, cal = records[:half], records[half:]

    def states(recs: list) -> dict:
        """Pooled states of edit prompts; per rephrase and other question, each candidate's, which question it is
        of and whose record that is."""
        out = {"edit": scope.pooled_prompts(model, tok, [r.edit.prompt for r in recs])}
        for name, texts in (("own", [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]]),
                            ("same", [(i, p) for i, r in enumerate(recs) for p in r.extra.get("other_questions", [])])):
            pooled, of = scope.candidate_pooled(model, tok, [p for _, p in texts])
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
    edits = scope.unit(cal_states["edit"])
    radii = torch.tensor(scope.radii(edits) or [scope.cfg.radius] * len(cal))

    def related(pooled: torch.Tensor) -> torch.Tensor:
        return normed((pooled - scope.center) @ relation.T)

    rel_edits = related(cal_states["edit"])

    def selected(name: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Per question: whether the scope selects its record's edit, the relation cosine of the candidate it
        selects by, and its record's data set."""
        pooled, of, rec = cal_states[name]
        rec_t = torch.tensor(rec, dtype=torch.long)
        owner = rec_t[torch.tensor(of, dtype=torch.long)]  # each candidate's record
        sim = (scope.unit(pooled) * edits[owner]).sum(1)
        rel = (related(pooled) * rel_edits[owner]).sum(1)
        rows = best_candidates(sim, of, len(rec))
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
    selecting some edit) and `same` (other questions about a subject selecting some edit). The costs it bounds
    are small at every radius, so the fit mostly sets the scale of a model's cosines; the shipped radius is the
    one measured through the service."""
    rows: dict = {None: {}, **{r: {} for r in WORD_RADII}}
    sizes: dict = {}
    for kind in sorted({r.kind for r in records}):
        recs = [r for r in records if r.kind == kind]
        edits = scope.prompt_keys(model, tok, [r.edit.prompt for r in recs])
        own_radii = scope.radii(edits) or [scope.cfg.radius] * len(recs)
        deltas = [LowRankDelta({}, ScopedMeta(prompts=(r.edit.prompt,), radii=(own_radii[i],)).written(),
                               edits[i:i + 1]) for i, r in enumerate(recs)]
        groups = {"own": [(i, p) for i, r in enumerate(recs) for p in r.rephrases[:2]],
                  "captured": [(-1, q.prompt) for r in recs for q in r.loc[:10]],
                  "same": [(-1, p) for r in recs for p in r.extra.get("other_questions", [])]}
        keyed = {}
        for name, items in groups.items():
            if items:
                keys, of = scope.candidate_keys(model, tok, [p for _, p in items])
                best = best_candidates((keys @ edits.T).max(1).values, of, len(items))
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
