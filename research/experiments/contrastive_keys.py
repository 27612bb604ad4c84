"""Learned key projection: does a small map P on the scope keys (applied after centring, before normalising) make
paraphrases select their own edit more often, without capturing more neighbours? Pooled block-key_block states are
cached once (safetensors + JSON in .cache/, gitignored); P is fitted on train records only, the radius is chosen on
500 further train records (max own - 3 x captured, as fit_scope), and everything is scored on DEV records in one
codebook of N edits, as the service selects: each prompt's best candidate (itself or a sentence suffix) against
the codebook. own = paraphrase selects its own edit at >= radius; captured = locality / neighbourhood prompt
selects any edit; wrong = paraphrase selects another edit. "both" = one P and one radius for the two data sets.

    nice -n 15 python research/experiments/contrastive_keys.py cache   # ~20 min on 1 thread, once
    nice -n 15 python research/experiments/contrastive_keys.py run     # P on 2000 CF + 3000 zsRE train records
    nice -n 15 python research/experiments/contrastive_keys.py sweep   # whitening vs number of fit records

Printed (2026-12-02, 1 CPU thread, machine shared; dev: first 1000 one-per-subject records of each dev.json):

    keys (P fitted on)     radius | CF N=200     CF N=1000          | zsRE N=200   zsRE N=1000        | fit
                                  | own  capt    own  capt  wrong   | own  capt    own  capt  wrong   |
    current (none)          0.70  | .581 .068    .571 .143  .081    | .846 .000    .843 .000  .009    |  -
    whiten(within)  cf      0.64  | .857 .023    .857 .043  .002    |                                 |  12s
    whiten(within)  zsre    0.58  |                                 | .993 .000    .993 .003  .001    |   2s
    whiten(within)  both    0.62  | .856 .027    .856 .047  .004    | .969 .000    .969 .000  .001    |  11s
    whiten+lowrank64 cf     0.64  | .861 .023    .860 .043  .002    |                                 | 123s
    whiten+lowrank64 zsre   0.59  |                                 | .992 .000    .992 .000  .001    |  12s
    whiten+lowrank64 both   0.62  | .859 .026    .859 .047  .004    | .970 .000    .970 .000  .001    |  63s
    I+lowrank64     cf      0.69  | .727 .034    .718 .077  .032    |                                 |  37s
    I+lowrank64     zsre    0.57  |                                 | .984 .000    .976 .001  .013    |   5s
    I+lowrank64     both    0.68  | .703 .047    .692 .110  .047    | .891 .000    .888 .000  .006    |  20s
    linear dxd      cf      0.68  | .802 .034    .789 .078  .029    |                                 |  94s
    linear dxd      zsre    0.56  |                                 | .993 .000    .989 .000  .007    |  11s
    linear dxd      both    0.69  | .753 .035    .742 .085  .034    | .911 .000    .908 .000  .005    |  46s
    down256         cf      0.68  | .813 .037    .800 .093  .031    |                                 |  55s
    down256         zsre    0.58  |                                 | .990 .000    .985 .000  .008    |   6s
    down256         both    0.68  | .788 .046    .771 .112  .041    | .927 .000    .924 .000  .006    |  22s
    (the radius chosen for the current keys on train is 0.70, the shipped one)

    sweep, whitening fitted on n train records (dev N=1000):
    n      CF own capt wrong (radius)   zsRE own capt wrong (radius)
    250    .853 .048 .002 (0.65)        .990 .000 .001 (0.59)
    500    .864 .047 .002 (0.64)        .980 .000 .001 (0.64)
    1000   .877 .052 .003 (0.62)        .978 .000 .001 (0.66)
    2000   .868 .049 .002 (0.62)        .986 .000 .002 (0.61)
    4000   .874 .050 .004 (0.62)        .976 .000 .001 (0.66)

The winner needs no training: whiten the centred keys by the covariance of paraphrase-minus-edit differences
(W = (S_w + alpha tr(S_w)/d I)^-1/2, ridge alpha from 5 values by the calibration objective). Gradient-trained maps
(InfoNCE over in-batch edits + hinges at 0.7 +- 0.1 for own, other edits and locality prompts; Adam, 200 steps of
128 records) are all worse than it, and a trained low-rank residual on top of it adds nothing (+0.003).
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)
CACHE = Path(__file__).parent / ".cache"
SCOPE_DIR = "weights/smollm2"
DATA = {"cf": "counterfact:../shared/data/counterfact/{split}.json", "zsre": "zsre:../shared/data/zsre/{split}.json"}
CHUNK = 250  # records per cache file


# ---------------------------------------------------------------------------------------------------------------
# 1. cache: pooled (uncentred) block-key_block states of every prompt a record brings, and its sentence suffixes

def chunk_name(kind, split, start):
    return CACHE / f"{kind}_{split}_{start:05d}"


def cache_chunk(model, tok, scope, records, path):
    """One safetensors of unique texts' pooled states + a JSON of which rows each record's prompts are."""
    from editor_core.scope import sentence_suffixes
    rows = {}

    def row(text):
        return rows.setdefault(text, len(rows))

    recs = []
    for r in records:
        recs.append({"edit": row(r.edit.prompt),
                     "rephrases": [[row(t) for t in sentence_suffixes(p)] for p in r.rephrases],
                     "loc": [[row(t) for t in sentence_suffixes(q.prompt)] for q in r.loc]})
    texts = list(rows)
    order = sorted(range(len(texts)), key=lambda i: len(tok(texts[i])["input_ids"]))  # less padding per batch
    pooled = scope.pooled_prompts(model, tok, [texts[i] for i in order])
    out = torch.empty_like(pooled)
    out[torch.tensor(order)] = pooled
    save_file({"pooled": out.contiguous()}, str(path) + ".safetensors")
    meta = {"key_block": scope.cfg.key_block, "window": scope.cfg.window, "texts": texts, "records": recs}
    Path(str(path) + ".json").write_text(json.dumps(meta))


def cache(plan):
    """plan: list of (kind, split, n_records); chunks already cached are skipped, so a plan can be extended."""
    from editor_core import load_base_model, load_records
    from editor_core.scope import Scope
    model, tok = load_base_model()
    scope = Scope.load(SCOPE_DIR, [])  # layers only matter for applying deltas; keys need none
    for kind, split, n in plan:
        records = load_records(DATA[kind].format(split=split), n, one_per_subject=True)
        for start in range(0, len(records), CHUNK):
            path = chunk_name(kind, split, start)
            if Path(str(path) + ".json").exists():
                continue
            t0 = time.time()
            cache_chunk(model, tok, scope, records[start : start + CHUNK], path)
            print(f"cached {path.name} in {time.time() - t0:.0f}s", flush=True)


def load_cache(kind, split, n):
    """Records 0..n of a split: (states (T, d), records with rows into it) over the chunks, rows shifted."""
    states, recs, offset = [], [], 0
    for start in range(0, n, CHUNK):
        path = chunk_name(kind, split, start)
        if not Path(str(path) + ".json").exists():
            break
        meta = json.loads(Path(str(path) + ".json").read_text())
        cfg = json.loads(Path(SCOPE_DIR, "scope.json").read_text())
        assert (meta["key_block"], meta["window"]) == (cfg["key_block"], cfg["window"]), f"{path}: stale cache"
        X = load_file(str(path) + ".safetensors")["pooled"]
        shift = lambda c: [i + offset for i in c]
        for r in meta["records"]:
            recs.append({"edit": r["edit"] + offset, "rephrases": [shift(c) for c in r["rephrases"]],
                         "loc": [shift(c) for c in r["loc"]]})
        states.append(X)
        offset += len(X)
    return torch.cat(states), recs[:n]


# ---------------------------------------------------------------------------------------------------------------
# 2. data as tensors: centred, unit keys of edits; paraphrases and locality prompts as padded candidate sets

def unit(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def candidates(X, sets):
    """(n, C, d) padded candidate keys of n prompts (each a list of rows into X), and the (n, C) mask."""
    C = max(len(s) for s in sets)
    idx = torch.tensor([s + [s[0]] * (C - len(s)) for s in sets])
    mask = torch.tensor([[True] * len(s) + [False] * (C - len(s)) for s in sets])
    return X[idx], mask


def pack(states, recs, center):
    """Keys as the service makes them before P: pooled - center, unit (P is linear, so unit(P(x - c)) =
    unit(P(unit(x - c))))."""
    X = unit(states - center)
    q_sets = [(i, c) for i, r in enumerate(recs) for c in r["rephrases"]]
    l_sets = [(i, c) for i, r in enumerate(recs) for c in r["loc"]]
    Q, Qm = candidates(X, [c for _, c in q_sets])
    L, Lm = candidates(X, [c for _, c in l_sets])
    return {"E": X[torch.tensor([r["edit"] for r in recs])], "Q": Q, "Qm": Qm,
            "Qown": torch.tensor([i for i, _ in q_sets]), "L": L, "Lm": Lm, "Lown": torch.tensor([i for i, _ in l_sets])}


def subset(d, lo, hi):
    """Records lo..hi of a packed set, owners renumbered from 0."""
    q = (d["Qown"] >= lo) & (d["Qown"] < hi)
    l = (d["Lown"] >= lo) & (d["Lown"] < hi)
    return {"E": d["E"][lo:hi], "Q": d["Q"][q], "Qm": d["Qm"][q], "Qown": d["Qown"][q] - lo,
            "L": d["L"][l], "Lm": d["Lm"][l], "Lown": d["Lown"][l] - lo}


def concat(a, b):
    n = len(a["E"])
    return {"E": torch.cat([a["E"], b["E"]]), "Qown": torch.cat([a["Qown"], b["Qown"] + n]),
            "Lown": torch.cat([a["Lown"], b["Lown"] + n]),
            **{k: pad_cat(a[k], b[k]) for k in ("Q", "Qm", "L", "Lm")}}


def pad_cat(a, b):
    C = max(a.shape[1], b.shape[1])
    pad = lambda t: torch.cat([t, t[:, :1].expand(-1, C - t.shape[1], *t.shape[2:]) if t.dtype != torch.bool
                               else torch.zeros(len(t), C - t.shape[1], dtype=torch.bool)], 1)
    return torch.cat([pad(a), pad(b)])


# ---------------------------------------------------------------------------------------------------------------
# 3. selection as the service does it: best candidate (prompt or sentence suffix) against one codebook

def best_sims(cands, mask, E):
    """Per prompt: the highest cosine of any of its candidates to any edit key, and the edit it belongs to
    (Scope.request_keys then Scope._nearest; ties between edits are measure-zero here)."""
    s = torch.einsum("ncd,kd->nck", cands, E).masked_fill(~mask[..., None], -2.0)
    s = s.flatten(1)
    v, j = s.max(1)
    return v, j % E.shape[0]


def rates(proj, d):
    """For one codebook (all of d's edits): per paraphrase (best sim, is-own), per locality prompt best sim."""
    E = unit(proj(d["E"]))
    qv, qj = best_sims(unit(proj(d["Q"])), d["Qm"], E)
    lv, _ = best_sims(unit(proj(d["L"])), d["Lm"], E)
    return qv, qj == d["Qown"], lv


def at_radius(r, qv, own, lv):
    """own: paraphrases selecting their own edit; captured: locality prompts selecting any; wrong: paraphrases
    selecting another edit (it would install the wrong fact)."""
    sel = qv >= r
    return float((own & sel).float().mean()), float((lv >= r).float().mean()), float((~own & sel).float().mean())


def codebooks(proj, d, N):
    """Rates over disjoint codebooks of N edits (the whole set when it has fewer), pooled."""
    n = len(d["E"])
    parts = [rates(proj, subset(d, lo, lo + N)) for lo in range(0, max(n - N + 1, 1), N)]
    return tuple(torch.cat(x) for x in zip(*parts))


RADII = [x / 100 for x in range(20, 100)]


def choose_radius(proj, cals, loc_weight=3.0):
    """The radius maximising the mean over datasets of own-selection - loc_weight x captured (as fit_scope),
    and that maximum."""
    rs = [rates(proj, c) for c in cals]
    def objective(r):
        return sum(o - loc_weight * c for o, c, _ in (at_radius(r, *x) for x in rs)) / len(rs)
    return max((objective(r), r) for r in RADII)[::-1]


# ---------------------------------------------------------------------------------------------------------------
# 4. projections: each a function of (n..., d) unit keys; parameters trained on train records only

def identity():
    return lambda x: x, []


def full_linear(d):
    W = torch.eye(d).requires_grad_()
    return lambda x: x @ W.T, [W]


def low_rank(d, rank):
    A = torch.zeros(d, rank, requires_grad=True)
    B = (torch.randn(rank, d) / math.sqrt(d)).requires_grad_()
    return lambda x: x + (x @ B.T) @ A.T, [A, B]


def down(X, k):
    """d -> k, initialised at the top-k principal directions of the training keys (cosines roughly kept)."""
    _, _, V = torch.linalg.svd(X - X.mean(0), full_matrices=False)
    W = V[:k].clone().requires_grad_()
    return lambda x: x @ W.T, [W]


def within_whiten(d_train, alpha):
    """No training: whiten by the covariance of paraphrase-minus-edit differences (the wording variation a key
    should ignore), ridge alpha x mean variance. Paraphrase = its candidate nearest its own edit. Returns W."""
    E = d_train["E"][d_train["Qown"]]
    s = torch.einsum("ncd,nd->nc", d_train["Q"], E).masked_fill(~d_train["Qm"], -2)
    q = d_train["Q"][torch.arange(len(s)), s.argmax(1)]
    D = q - E
    S = D.T @ D / len(D)
    S = S + alpha * S.trace() / len(S) * torch.eye(len(S))
    vals, vecs = torch.linalg.eigh(S)
    return vecs @ torch.diag(vals.rsqrt()) @ vecs.T


ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0)


def best_whitening(fit, cals):
    """within_whiten with the ridge that scores best on the calibration records (train split, held out of fit)."""
    scored = [(choose_radius(lambda x, W=W: x @ W.T, cals)[1], a, W) for a in ALPHAS for W in [within_whiten(fit, a)]]
    score, alpha, W = max(scored, key=lambda t: t[0])
    print(f"  whitening ridge {alpha} (cal objective {score:.3f})", flush=True)
    return W


def whiten(fit, cals):
    W = best_whitening(fit, cals)
    return lambda x: x @ W.T, []


def whiten_low_rank(fit, cals, rank):
    """The chosen whitening, then an identity + low-rank residual trained on top."""
    W = best_whitening(fit, cals)
    A = torch.zeros(W.shape[0], rank, requires_grad=True)
    B = (torch.randn(rank, W.shape[0]) / math.sqrt(W.shape[0])).requires_grad_()
    def proj(x):
        y = x @ W.T
        return y + (y @ B.T) @ A.T
    return proj, [A, B]


def loss_fn(proj, b, r0=0.7, margin=0.1, tau=0.05, loc_weight=3.0):
    """InfoNCE of each paraphrase (its best candidate per edit) over the batch's edits, plus hinges: own cosine
    >= r0 + margin, other edits' and locality prompts' best cosine <= r0 - margin."""
    E = unit(proj(b["E"]))
    s = torch.einsum("ncd,kd->nck", unit(proj(b["Q"])), E).masked_fill(~b["Qm"][..., None], -2.0).max(1).values
    own = s.gather(1, b["Qown"][:, None])[:, 0]
    other = s.scatter(1, b["Qown"][:, None], -2.0).max(1).values
    sl = torch.einsum("ncd,kd->nck", unit(proj(b["L"])), E).masked_fill(~b["Lm"][..., None], -2.0).amax((1, 2))
    nce = torch.nn.functional.cross_entropy(s / tau, b["Qown"])
    hinge = (torch.relu(r0 + margin - own).mean() + torch.relu(other - (r0 - margin)).mean()
             + loc_weight * torch.relu(sl - (r0 - margin)).mean())
    return nce + hinge


def train(proj, params, d, steps=300, batch=256, lr=1e-3, decay=1e-2, seed=0):
    """Adam on random batches of records; decay pulls the parameters back to their start."""
    if not params:
        return proj
    g = torch.Generator().manual_seed(seed)
    start = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=lr)
    n = len(d["E"])
    for step in range(steps):
        idx = torch.randperm(n, generator=g)[:batch]
        b = batch_of(d, idx)
        loss = loss_fn(proj, b) + decay * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return proj


def batch_of(d, idx):
    """Records idx of d, owners renumbered to positions in idx."""
    pos = torch.full((len(d["E"]),), -1, dtype=torch.long)
    pos[idx] = torch.arange(len(idx))
    q, l = pos[d["Qown"]] >= 0, pos[d["Lown"]] >= 0
    return {"E": d["E"][idx], "Q": d["Q"][q], "Qm": d["Qm"][q], "Qown": pos[d["Qown"][q]],
            "L": d["L"][l], "Lm": d["Lm"][l], "Lown": pos[d["Lown"][l]]}


# ---------------------------------------------------------------------------------------------------------------
# 5. the experiment

def run(n_train, n_cal, n_dev, steps, batch, only=None):
    center = load_file(f"{SCOPE_DIR}/scope.safetensors")["center"].float()
    sets = {}
    for kind in ("cf", "zsre"):
        X, recs = load_cache(kind, "train", n_train[kind] + n_cal)
        full = pack(X, recs, center)
        n_fit = len(recs) - n_cal
        Xd, recs_d = load_cache(kind, "dev", n_dev)
        sets[kind] = {"fit": subset(full, 0, n_fit), "cal": subset(full, n_fit, len(recs)), "dev": pack(Xd, recs_d, center)}
        print(f"{kind}: {n_fit} fit records ({len(sets[kind]['fit']['Q'])} paraphrases, "
              f"{len(sets[kind]['fit']['L'])} locality), {n_cal} cal, {len(recs_d)} dev", flush=True)
    sets["both"] = {"fit": concat(sets["cf"]["fit"], sets["zsre"]["fit"])}
    d = sets["cf"]["fit"]["E"].shape[1]

    variants = {
        "current": lambda fit, cals: identity(),
        "whiten(within)": lambda fit, cals: whiten(fit, cals),
        "whiten+lowrank64": lambda fit, cals: whiten_low_rank(fit, cals, 64),
        "I+lowrank64": lambda fit, cals: low_rank(d, 64),
        "linear dxd": lambda fit, cals: full_linear(d),
        "down256": lambda fit, cals: down(fit["E"], 256),
    }
    variants = {k: v for k, v in variants.items() if k in only} if only else variants
    rows = []
    for name, make in variants.items():
        for trained_on in ("cf", "zsre", "both"):
            if name == "current" and trained_on != "both":
                continue
            evals = ("cf", "zsre") if trained_on == "both" else (trained_on,)
            cals = [sets[k]["cal"] for k in evals]
            t0 = time.time()
            proj, params = make(sets[trained_on]["fit"], cals)
            proj = train(proj, params, sets[trained_on]["fit"], steps=steps, batch=batch)
            secs = time.time() - t0
            radius, _ = choose_radius(proj, cals)
            radii = [radius] + ([0.7] if name == "current" and radius != 0.7 else [])
            for r in radii:
                for k in evals:
                    for N in (200, 1000):
                        qv, own, lv = codebooks(proj, sets[k]["dev"], N)
                        o, c, w = at_radius(r, qv, own, lv)
                        rows.append((name, trained_on, k, N, r, o, c, w, secs))
                        print(f"{name:15s} P fit on {trained_on:4s} | dev {k:4s} N={N:4d} radius {r:.2f} | "
                              f"own {o:.3f}  captured {c:.3f}  wrong {w:.3f} | train {secs:.0f}s", flush=True)
    return rows


def sweep(sizes, n_dev):
    """Whitening vs how many train records it is fitted on: calibration fixed to train records 0..500, fit on the
    next n; evaluated as in `run` (dev, N=1000 codebook, radius chosen on calibration)."""
    center = load_file(f"{SCOPE_DIR}/scope.safetensors")["center"].float()
    for kind in ("cf", "zsre"):
        X, recs = load_cache(kind, "train", 500 + max(sizes))
        full = pack(X, recs, center)
        Xd, recs_d = load_cache(kind, "dev", n_dev)
        dev, cal = pack(Xd, recs_d, center), subset(full, 0, 500)
        for n in sizes:
            if 500 + n > len(recs):
                continue
            t0 = time.time()
            proj, _ = whiten(subset(full, 500, 500 + n), [cal])
            secs = time.time() - t0
            r, _ = choose_radius(proj, [cal])
            o, c, w = at_radius(r, *codebooks(proj, dev, 1000))
            print(f"whiten on {n:5d} {kind:4s} records | dev N=1000 radius {r:.2f} | own {o:.3f}  captured {c:.3f}  "
                  f"wrong {w:.3f} | fit {secs:.0f}s", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["cache", "run", "sweep"])
    ap.add_argument("--plan", default="zsre:dev:1000,zsre:train:6000,cf:dev:1000,cf:train:5000")
    ap.add_argument("--n-cf", type=int, default=2000, help="CounterFact train records P is fitted on")
    ap.add_argument("--n-zsre", type=int, default=3000, help="zsRE train records P is fitted on")
    ap.add_argument("--n-cal", type=int, default=500, help="further train records per dataset that pick the radius")
    ap.add_argument("--n-dev", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = ap.parse_args()
    if args.stage == "cache":
        cache([(k, s, int(n)) for k, s, n in (p.split(":") for p in args.plan.split(","))])
    elif args.stage == "sweep":
        sweep([250, 500, 1000, 2000, 4000], args.n_dev)
    else:
        run({"cf": args.n_cf, "zsre": args.n_zsre}, args.n_cal, args.n_dev, args.steps, args.batch,
            args.only.split(",") if args.only else None)
