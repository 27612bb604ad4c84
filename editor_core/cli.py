"""`mend train` and `mend eval` (the service adds `mend serve`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

app = typer.Typer(help="MEND model editing: train an editor, evaluate it against FT and FT+KL, serve it.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def train(
    out: Path = typer.Option(Path("runs/editor"), help="checkpoint folder (resumed when it holds one)"),
    model: str = typer.Option("smollm2", help="'smollm2', a HF folder or hub id, or a .gguf file"),
    data: list[str] = typer.Option(["zsre:../shared/data/zsre/train.json"], help="zsre:FILE or counterfact:FILE"),
    dev: list[str] = typer.Option(["zsre:../shared/data/zsre/dev.json"], help="validation sets, same syntax"),
    layers: list[str] | None = typer.Option(None, help="parameter names or globs (default: last 3 MLPs)"),
    steps: int = 300, batch_size: int = 4, n_loc: int = 4, rank: int = 256, init_alpha: float = 1e-4,
    lr: float = 1e-4, lr_alpha: float = 1e-2, c_edit: float = 1.0, c_loc: float = 10.0,
    val_every: int = 100, val_n: int = 50, patience: int = 5, seed: int = 0,
    max_records: int | None = typer.Option(None, help="use the first N records of each training file"),
    threads: int | None = typer.Option(None, help="torch threads"),
    precond_lambda: float = typer.Option(0.01, help="ridge of the input preconditioner; <= 0 trains plain MEND"),
    precond_prompts: int = typer.Option(1000, help="training records whose prompts fit the preconditioner"),
    prefix_cache: bool = typer.Option(True, help="cache the frozen blocks' outputs per sequence"),
    device: str = "cpu", dtype: str = "float32",
    scope: bool = typer.Option(True, help="fit the scope of scoped edits (`mend fit-scope`) into OUT/best after "
                                          "training, so that `mend serve` runs the editor at its default method"),
    scope_records: int = typer.Option(500, help="training records per file the scope is fitted on"),
) -> None:
    """Train a MEND editor; the best checkpoint (by validation) lands in OUT/best, with its fitted scope."""
    from .train import TrainConfig
    from .train import train as run

    cfg = TrainConfig(model=model, train=data, dev=dev, out=str(out), layers=layers, rank=rank,
                      init_alpha=init_alpha, steps=steps, batch_size=batch_size, n_loc=n_loc, lr=lr,
                      lr_alpha=lr_alpha, c_edit=c_edit, c_loc=c_loc, val_every=val_every, val_n=val_n,
                      patience=patience, prefix_cache=prefix_cache, device=device, dtype=dtype, seed=seed,
                      max_records=max_records, threads=threads,
                      precond_lambda=precond_lambda if precond_lambda > 0 else None,
                      precond_prompts=precond_prompts)
    best = run(cfg)
    if scope:  # what `mend serve` needs for its default method, fitted on the same training files
        from .scope import ScopeConfig

        _fit_and_save_scope(model, best, data, scope_records, ScopeConfig(scale=2.0, max_scale=8.0, tune_steps=10,
                                                                              end_words=True))
    typer.echo(f"best editor: {best}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="a `mend train --out` folder"),
    out: Path = typer.Option(Path("weights/smollm2"), help="where the editor and its manifest go"),
) -> None:
    """Copy a run's best editor to OUT with manifest.json: data, steps, wall time, hyperparameters, fingerprints."""
    import hashlib
    import shutil

    from .mend import CONFIG_FILE, WEIGHTS_FILE

    state = json.loads((run / "train_state.json").read_text())
    best = json.loads((run / "best" / CONFIG_FILE).read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy(run / "best" / name, out / name)
    steps = [h for h in state["history"] if "loss" in h]
    data = {spec: hashlib.sha256(Path(spec.split(":", 1)[-1]).read_bytes()).hexdigest()
            for spec in state["train"]["train"] + state["train"]["dev"]}
    manifest = {
        "editor_sha256": hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest(),
        "base_model_fingerprint": best["config"]["model_fingerprint"],
        "data_sha256": data, "hyperparameters": state["train"], "editor_config": best["config"],
        "best_step": state["best"]["step"], "steps_run": state["step"],
        "wall_time_s": _wall_time(steps),
        "validation": [{"step": h["step"], "score": h["score"], **{f"{k}_{m}": v[m] for k, v in h["val"].items()
                        for m in ("edit", "rephrase", "loc") if m in v}} for h in state["history"] if "val" in h],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    typer.echo(f"exported {run}/best (step {manifest['best_step']}) to {out}")


# The training files the scope's fits read by default (never a dev split).
TRAIN_FILES = ("zsre:../shared/data/zsre/train.json", "counterfact:../shared/data/counterfact/train.json")


@app.command("fit-scope")
def fit_scope(
    editor: Path = typer.Option(Path("weights/smollm2"), help="editor folder; the scope is saved beside it"),
    model: str = "smollm2",
    data: list[str] = typer.Option(list(TRAIN_FILES),
                                   help="training records: their locality prompts fit the centre, their edits and "
                                        "rephrases the key block and radius (never a dev split)"),
    n: int = typer.Option(500, help="records per file (one per subject)"),
    key_block: list[int] | None = typer.Option(None, help="block(s) whose output, mean-pooled over the prompt, may "
                                                           "be the key (default: a sixth to two thirds of the depth; "
                                                           "the best on the objective is kept)"),
    window: int = typer.Option(0, help="pool over the prompt's last N tokens (0: all)"),
    loc_weight: float = typer.Option(3.0, help="maximised: rephrase hits - loc_weight x locality hits"),
    radius: float | None = typer.Option(None, help="use this radius instead (the table shows the trade-off)"),
    scale: float = typer.Option(2.0, help="step multiplier of scoped deltas"),
    max_scale: float = typer.Option(8.0, help="double the step of an edit that does not take, up to this (0: never)"),
    tune_steps: int = typer.Option(10, help="Adam steps on an edit that still misses at max_scale (left factors "
                                            "only; 0: never)"),
    end_words: bool = typer.Option(True, help="train each edit to end its answer's word too, and release it after"),
    whiten: bool = typer.Option(True, help="try whitening the keys against how rephrases differ (kept only if the "
                                           "objective improves)"),
    bank: bool = typer.Option(True, help="keep the records' edit prompts as the bank of other questions that no "
                                         "new edit's scope may cover (`mend fit-bank`)"),
    relation: bool = typer.Option(True, help="fit a relation check from the records' other questions about their "
                                             "subjects (`mend fit-relation`)"),
    relation_n: int = typer.Option(3000, help="records per file for the relation check (one per subject): its "
                                              "relation scatter wants more than the key's fit"),
    words_n: int = typer.Option(4000, help="records per file whose edit prompts tell the common words from the rare "
                                           "ones for the word check (`mend fit-words`; 0: no word check)"),
    word_radius: float | None = typer.Option(None, help="cosine from which a prompt naming all of an edit's rare "
                                                       "words may select it (default: fitted, `mend fit-words`)"),
    word_cal_n: int = typer.Option(1000, help="records per file after the words' ones that fit the word radius, "
                                               "stored together (as many edits as a long-lived log holds)"),
) -> None:
    """Fit the scoped-edit keys (editor_core.scope) for this model: centre, whitening, key block, radius, bank,
    relation check and word check."""
    from .scope import ScopeConfig

    _fit_and_save_scope(model, editor, data, n, ScopeConfig(window=window, scale=scale, max_scale=max_scale,
                                                           tune_steps=tune_steps, end_words=end_words),
                        loc_weight, key_block, radius, whiten, bank, relation_n if relation else 0, words_n,
                        word_radius, word_cal_n)


@app.command("fit-bank")
def fit_bank(
    editor: Path = typer.Option(Path("weights/smollm2"), help="editor folder with its fitted scope"),
    model: str = "smollm2",
    data: list[str] = typer.Option(list(TRAIN_FILES),
                                   help="training records whose edit prompts are the bank (never a dev split)"),
    n: int = typer.Option(1000, help="records per file (one per subject)"),
) -> None:
    """Give a fitted scope a bank of other questions: each new edit's radius is raised above the nearest of them
    (`Scope.radii`), so its scope covers no known other question. Keys, centre and radius stay as they are, and so
    does the scope's fingerprint: logged edits keep the radius they were made with."""
    from .data import load_records
    from .model import load_base_model
    from .scope import Scope

    m, tok = load_base_model(model)
    scope = Scope.load(editor, [])  # keys need no edited layers
    scope.with_bank(m, tok, [r.edit.prompt for spec in data for r in load_records(spec, n, one_per_subject=True)])
    scope.save(editor)
    typer.echo(f"bank of {len(scope.bank)} prompts saved to {editor}")


@app.command("fit-relation")
def fit_relation(
    editor: Path = typer.Option(Path("weights/smollm2"), help="editor folder with its fitted scope"),
    model: str = "smollm2",
    data: list[str] = typer.Option(list(TRAIN_FILES),
                                   help="training records with other questions about their subjects (never a dev "
                                        "split)"),
    n: int = typer.Option(3000, help="records per file (one per subject)"),
    k: int = typer.Option(64, help="directions of the relation projection"),
    ridge: float = typer.Option(0.3, help="added to the within-wording scatter, x its mean variance"),
    max_loss: float = typer.Option(0.01, help="largest drop in rephrases selecting their edit the check may cost, "
                                              "per data set"),
) -> None:
    """Give a fitted scope a relation check (`RelationCheck`): a prompt selects an edit only if it also asks the
    edit's relation, so other questions about the edited subject keep their answers. Keys, centre, radius and bank
    stay as they are, and so does the scope's fingerprint: the check reads logged keys as they are."""
    from .model import load_base_model
    from .scope import Scope

    m, tok = load_base_model(model)
    scope = Scope.load(editor, [])  # keys need no edited layers
    _fit_relation_into(scope, m, tok, _shuffled_records(data, n), k, ridge, max_loss)
    scope.save(editor)


@app.command("fit-words")
def fit_words(
    editor: Path = typer.Option(Path("weights/smollm2"), help="editor folder with its fitted scope"),
    model: str = "smollm2",
    data: list[str] = typer.Option(list(TRAIN_FILES), help="training records whose edit prompts tell common words "
                                                           "from rare ones (never a dev split)"),
    n: int = typer.Option(4000, help="records per file (one per subject)"),
    max_share: float = typer.Option(0.002, help="a word in more than this share of those prompts is common"),
    radius: float | None = typer.Option(None, help="cosine from which a prompt naming all of an edit's rare words "
                                                  "may select it (default: fitted on the records after the n)"),
    cal_n: int = typer.Option(1000, help="records per file after the n that fit the radius, stored together (as "
                                         "many edits as a long-lived log holds)"),
    max_gain: float = typer.Option(0.01, help="largest rise in locality prompts and other questions about a "
                                              "subject selecting some edit the check may cost, per data set"),
) -> None:
    """Give a fitted scope a word check (`WordCheck`): a prompt that names every rare word of an edit's question
    may select the edit from a looser radius. Keys, centre, radius, bank and relation check stay as they are, and
    so does the scope's fingerprint: the check reads the prompts logged with each edit."""
    from .model import load_base_model
    from .scope import Scope

    scope = Scope.load(editor, [])
    m, tok = (None, None) if radius is not None else load_base_model(model)
    _fit_words_into(scope, m, tok, data, n, max_share, radius, cal_n, max_gain)
    scope.save(editor)


def _fit_words_into(scope, m, tok, data: list[str], n: int, max_share: float = 0.002, radius: float | None = None,
                    cal_n: int = 1000, max_gain: float = 0.01) -> None:
    """The common words from the first n records of each file; the radius given, or fitted (`fit_word_radius`) on
    the next cal_n (the first cal_n where a file has no more: then in-sample)."""
    from .data import load_records
    from .scope import fit_word_radius
    from .scope import fit_words as common_words

    loaded = [load_records(spec, n + (cal_n if radius is None else 0), one_per_subject=True) for spec in data]
    prompts = [r.edit.prompt for recs in loaded for r in recs[:n]]
    common = common_words(prompts, max_share)
    typer.echo(f"word check: {len(common)} common words (in more than {max_share} of {len(set(prompts))} "
               f"edit prompts)")
    if radius is None:
        if any(len(recs) <= n for recs in loaded):
            typer.echo(f"a file has no records after its first {n}: its radius is fitted on those, in-sample")
        cal = [r for recs in loaded for r in (recs[n:] or recs[:cal_n]) if r.rephrases]
        radius, report = fit_word_radius(scope, m, tok, cal, common, max_gain)
        sets = sorted(report["questions"])
        typer.echo(f"\nword radius, fitted on {report['questions']} (each set's edits stored together)")
        typer.echo("| word radius | " + " | ".join(f"{k} {name}" for k in sets for name in report["questions"][k])
                   + " |")
        typer.echo("|---" * (1 + sum(len(report["questions"][k]) for k in sets)) + "|")
        for r, row in report["rows"].items():
            typer.echo(f"| {'none' if r is None else f'{r:.2f}'} | "
                       + " | ".join(f"{row[k][name]:.3f}" for k in sets for name in report["questions"][k]) + " |")
        if radius is None:
            typer.echo(f"no radius keeps captures within {max_gain}: no word check")
    scope.with_words(common if radius is not None else None, radius)
    if radius is not None:
        typer.echo(f"word radius {radius}")


def _shuffled_records(data: list[str], n: int) -> list:
    """The first n records of each file (one per subject) that have rephrases, shuffled so that both data sets are
    in both halves of a fit."""
    import random

    from .data import load_records

    recs = [r for spec in data for r in load_records(spec, n, one_per_subject=True) if r.rephrases]
    random.Random(0).shuffle(recs)
    return recs


def _fit_relation_into(scope, m, tok, recs: list, k: int = 64, ridge: float = 0.3, max_loss: float = 0.01) -> None:
    from .scope import fit_relation

    relation, radius, report = fit_relation(scope, m, tok, recs, k=k, ridge=ridge, max_loss=max_loss)
    if relation is None:
        typer.echo("no record asks its subject another question: no relation check")
        scope.with_relation(None, None)
        return
    scope.with_relation(relation, radius)
    kinds = report["kinds"]
    (fit_reph, fit_other), (cal_reph, cal_other) = report["fit"], report["calibration"]
    typer.echo(f"\nrelation projection: k {k}, ridge {ridge}, fitted on {fit_reph} rephrases and {fit_other} other "
               f"questions; calibrated on {cal_reph} and {cal_other}")
    typer.echo("| relation radius | " + " | ".join(f"{x} rephrases select their edit" for x in kinds)
               + " | other questions select it |")
    typer.echo("|---" * (2 + len(kinds)) + "|")
    for r, row in report["rows"].items():
        if r is None or r >= 0:
            typer.echo(f"| {'none' if r is None else f'{r:.2f}'} | "
                       + " | ".join(f"{row[x]:.3f}" for x in kinds) + f" | {row['same']:.3f} |")
    typer.echo(f"relation radius {radius}: rephrases lose at most {max_loss} in each data set")


def _fit_and_save_scope(model: str, editor: Path, data: list[str], n: int, cfg, loc_weight: float = 3.0,
                        blocks: list[int] | None = None, radius: float | None = None, whiten: bool = True,
                        bank: bool = True, relation_n: int = 3000, words_n: int = 4000,
                        word_radius: float | None = None, word_cal_n: int = 1000) -> None:
    from .mend import MENDEditor
    from .model import load_base_model
    from .scope import fit_scope

    m, tok = load_base_model(model)
    ed = MENDEditor.load(editor, m)
    recs = _shuffled_records(data, n)
    scope, report = fit_scope(m, tok, ed.layers, recs, cfg, loc_weight, blocks or None, radius, whiten)
    if bank:
        scope.with_bank(m, tok, [r.edit.prompt for r in recs])
    if relation_n:
        _fit_relation_into(scope, m, tok, _shuffled_records(data, relation_n))
    if words_n:
        _fit_words_into(scope, m, tok, data, words_n, radius=word_radius, cal_n=word_cal_n)
    scope.save(editor)
    typer.echo("| key block | whitening ridge | radius | rephrase hits | loc hits | objective |")
    typer.echo("|---|---|---|---|---|---|")
    for block, r in report.items():
        ridge = "none" if r["ridge"] is None else r["ridge"]
        typer.echo(f"| {block} | {ridge} | {r['radius']:.2f} | {r['rephrase_hits']:.3f} | {r['loc_hits']:.3f} | "
                   f"{r['objective']:.3f} |")
    rates = report[scope.cfg.key_block]["rates"]
    kinds = sorted({r.kind for r in recs})
    typer.echo("\n| radius | " + " | ".join(f"{k} rephrase hits | {k} loc hits" for k in kinds) + " |")
    typer.echo("|---" * (1 + 2 * len(kinds)) + "|")
    for t in sorted({scope.cfg.radius, *[x / 100 for x in range(40, 95, 5)]}):
        typer.echo(f"| {t:.2f} | " + " | ".join(f"{v:.3f}" for k in kinds for v in rates(t, k)) + " |")
    chosen = report[scope.cfg.key_block]
    typer.echo(f"key block {scope.cfg.key_block}, radius {scope.cfg.radius:.2f} saved to {editor} "
               f"({chosen['rephrase_hits']:.3f} of {len(recs) - len(recs) // 2} training rephrases select their "
               f"own edit, {chosen['loc_hits']:.3f} of the locality prompts select any edit)")


def _wall_time(steps: list[dict]) -> float:
    """Training seconds over every segment of a resumed run (each segment's clock restarts at 0)."""
    total, last = 0.0, 0.0
    for h in steps:
        if h["time"] < last:
            total += last
        last = h["time"]
    return total + last


METRICS = ["edit", "rephrase", "loc", "loc_token", "loc_kl", "efficacy", "paraphrase", "neighborhood",
           "latency_ms_p50", "fwd_bwd_ms_p50", "latency_ratio", "latency_ms_p50_first50", "latency_ms_p50_last50"]


def _table(results: dict[str, dict]) -> str:
    cols = [m for m in METRICS if any(m in r["summary"] for r in results.values())]
    lines = ["| method | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, r in results.items():
        s = r["summary"]
        vals = [f"{s[c]:.1f}" if "_ms_" in c else f"{s[c]:.2f}" if c == "latency_ratio"
                else f"{s[c]:.3f}" if c in s else "-" for c in cols]
        lines.append(f"| {name} | {s['n']} | " + " | ".join(vals) + " |")
    for name, r in results.items():
        for p in r["curve"]:
            lines.append(f"{name} after {p['edits']} sequential edits: "
                         + ", ".join(f"{c} {p[c]:.3f}" for c in cols if c in p))
    return "\n".join(lines)


@app.command("eval")
def evaluate_cmd(
    editor: Path | None = typer.Option(None, help="trained editor folder (needed for --method mend)"),
    data: str = typer.Option("zsre:../shared/data/zsre/dev.json", help="zsre:FILE or counterfact:FILE"),
    model: str = "smollm2",
    n: int = 100, batch_size: int = 1,
    sequential: int | None = typer.Option(None, help="apply K edits without reverting, then re-check all"),
    method: list[str] = typer.Option(["mend", "ft", "ft-kl"], help="mend, mend-scoped, ft, ft-kl (repeatable)"),
    loc_pool: str = typer.Option("zsre:../shared/data/zsre/train.json",
                                 help="FT+KL's locality prompts (never the evaluated records' own)"),
    json_out: Path | None = typer.Option(None, "--json", help="write the results here"),
    device: str = "cpu", dtype: str = "float32",
    delta_rel_tol: float = typer.Option(0.0, help="compress MEND's deltas as the service does (it uses 0.03)"),
    delta_dtype: str | None = typer.Option(None, help="store MEND's deltas in this dtype (the service: float16)"),
    generate: int = typer.Option(0, help="also check the first N records by what the model says (greedy replies "
                                         "to the prompt, rephrases, chat, unrelated prompts; fluency): says_*"),
    reword: bool = typer.Option(True, help="mend-scoped: a prompt in other words than its edit's gets the edit made "
                                           "for its words, as the service does by default (MEND_REWORD)"),
) -> None:
    """Edit N dev records with each method, on the same records, and print a side-by-side table."""
    from .data import load_records
    from .evaluate import evaluate, ft_method, mend_method, scoped_mend_method
    from .layers import select_layers
    from .mend import MENDEditor
    from .model import DTYPES, load_base_model, model_fingerprint
    from .scope import Scope

    m, tok = load_base_model(model, dtype, device)
    ed = MENDEditor.load(editor, m).to(device) if editor else None
    layers = ed.layers if ed else select_layers(m)
    records = load_records(data, n, one_per_subject=sequential is not None)
    if ed is not None and ed.cfg.model_fingerprint and ed.cfg.model_fingerprint != model_fingerprint(m):
        raise typer.BadParameter(f"{editor} was trained for model {ed.cfg.model_fingerprint}, not this one")
    pool = [q for r in load_records(loc_pool, 2000) for q in r.loc] if "ft-kl" in method else []
    curve = tuple(k for k in (10, 25, 50, 100, 300, 1000, 3000, 10000) if sequential and k < sequential)
    results = {}
    store = DTYPES[delta_dtype] if delta_dtype else None
    for name in method:
        if name.startswith("mend") and ed is None:
            raise typer.BadParameter(f"--method {name} needs --editor")
        scope = Scope.load(editor, ed.layers) if name == "mend-scoped" else None
        worded = (lambda text, form, s=scope: s.worded(m, tok, ed, text, form, None, delta_rel_tol, store)) \
            if scope and reword else None
        if name == "mend":
            fn = mend_method(m, tok, ed, delta_rel_tol, store)
        elif name == "mend-scoped":
            fn = scoped_mend_method(m, tok, ed, scope, delta_rel_tol, store)
        elif name in ("ft", "ft-kl"):
            fn = ft_method(m, tok, layers, loc_pool=pool if name == "ft-kl" else None)
        else:
            raise typer.BadParameter(f"unknown method {name!r}")
        results[name] = evaluate(m, tok, records, fn, [l.name for l in layers], batch_size, sequential, curve, scope,
                                 generate, worded)
    typer.echo(_table(results))
    if json_out:
        json_out.write_text(json.dumps({"data": data, "n": n, "batch_size": batch_size, "sequential": sequential,
                                        "editor": str(editor), "results": results}, indent=2, sort_keys=True))


if __name__ == "__main__":
    app()
