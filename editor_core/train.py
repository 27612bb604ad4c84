"""Editor training, top to bottom: sample edits, apply the editor's update functionally, score, step.

Loss = c_edit · NLL(y_e | x_e and x'_e, post-edit) + c_loc · KL(p_pre ‖ p_post on x_loc's answer), as in the paper
but for two choices: x_e is scored with x'_e (the paper scores x'_e only; x_e is what efficacy measures), and the KL
is taken at the locality answers' positions, which is what the locality score counts, instead of at every token;
with the output layer projected there alone a step is several times cheaper, so more locality prompts fit in one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import PreTrainedModel

from .data import (
    EditRecord,
    EditRequest,
    all_per_row,
    answer_kl,
    load_records,
    target_nll,
    target_scores,
    tokenize_edits,
)
from .gradients import token_factors
from .layers import first_block
from .mend import WEIGHTS_FILE, MENDEditor
from .model import load_base_model, model_fingerprint
from .prefix_cache import PrefixCache
from .scoring import answer_logits

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    model: str = "smollm2"
    train: list[str] = field(default_factory=lambda: ["zsre:../shared/data/zsre/train.json"])
    dev: list[str] = field(default_factory=lambda: ["zsre:../shared/data/zsre/dev.json"])
    out: str = "runs/editor"
    layers: list[str] | None = None  # default: MLP matrices of the last 3 blocks
    rank: int = 256
    init_alpha: float = 1e-4
    steps: int = 300
    batch_size: int = 4  # edits per step, applied as one update
    n_loc: int = 4  # locality sequences per edit: its own loc prompt, another record's question, random others
    max_records: int | None = None  # per training file; a pool seen for several epochs lets the prefix cache hit
    threads: int | None = None  # torch threads (one per run when runs share a small CPU)
    precond_lambda: float | None = 0.01  # see MENDConfig; None trains plain MEND
    warmup_batches: int = 25  # batches that fill the normalization statistics before the first step
    precond_prompts: int = 1000  # training records whose prompts estimate the input second moments
    lr: float = 1e-4  # editor networks (the reference's 1e-6 needs 10^5+ steps; not an option on a CPU)
    lr_alpha: float = 1e-2  # per-layer steps, learned in log space
    c_edit: float = 1.0
    c_loc: float = 10.0
    grad_clip: float = 100.0
    val_every: int = 100
    val_n: int = 50
    patience: int = 5  # validations without improvement before stopping
    prefix_cache: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0


def _batch(tokenizer, reqs: list[EditRequest], device: str, max_length: int) -> dict:
    return {k: v.to(device) for k, v in tokenize_edits(tokenizer, reqs, max_length).items()}


def _forward(model, batch: dict, cache: PrefixCache | None, params: dict | None = None) -> torch.Tensor:
    with cache.skipping(batch) if cache is not None else contextlib.nullcontext():
        return answer_logits(model, batch, params)


def sample_step(records: list[EditRecord], cfg: TrainConfig, rng: random.Random):
    """A batch of edits, their equivalents (x_e and a rephrase) and their locality prompts."""
    recs = rng.sample(records, cfg.batch_size)
    edits = [r.edit for r in recs]
    outer = edits + [EditRequest(rng.choice(r.rephrases), r.edit.target) for r in recs if r.rephrases]
    loc = []
    for r in recs:
        loc += [rng.choice(r.loc)] if r.loc else []
        loc += [_question(rng.choice(records))]  # a hard negative: same kind of prompt, another subject
        loc += [rng.choice(o.loc) for o in rng.sample(records, cfg.n_loc - 2) if o.loc]
    return edits, outer, loc


def _question(r: EditRecord) -> EditRequest:
    """A record's prompt with its original answer: what editing another subject must leave alone."""
    return EditRequest(r.edit.prompt, r.true_target or r.extra.get("answer") or r.edit.target)


def edit_losses(model: PreTrainedModel, tokenizer, editor: MENDEditor, edits, outer, loc,
                cache: PrefixCache | None, max_length: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    dev = model.device
    eb, ob, lb = (_batch(tokenizer, x, dev, max_length) for x in (edits, outer, loc))
    ctx = cache.skipping(eb) if cache is not None else contextlib.nullcontext()
    with ctx:
        factors, _ = token_factors(model, editor.layers, eb)
    delta = editor.transform(factors)
    params = dict(model.named_parameters())
    new = {n: params[n] + (l @ r).to(params[n].dtype) for n, (l, r) in delta.factors.items()}
    post_outer = _forward(model, ob, cache, new)
    l_edit = target_nll(post_outer, ob["labels"]).mean()
    with torch.no_grad():
        pre_loc = _forward(model, lb, cache)
    post_loc = _forward(model, lb, cache, new)
    l_loc = answer_kl(pre_loc, post_loc)
    with torch.no_grad():
        hit = target_scores(post_outer, ob["labels"])[1].float().mean()
        keep = all_per_row(pre_loc.argmax(-1) == post_loc.argmax(-1), lb["labels"]).float().mean()  # strict
    return l_edit, l_loc, {"edit_acc": float(hit), "loc_keep": float(keep)}


@torch.no_grad()
def warm_up_statistics(model, tok, editor: MENDEditor, records: list[EditRecord], cfg: TrainConfig,
                       rng: random.Random) -> None:
    """Fill the normalization statistics before the first step, so early updates are not scaled by a few rows."""
    editor.train()
    for _ in range(cfg.warmup_batches):
        edits = [r.edit for r in rng.sample(records, cfg.batch_size)]
        factors, _ = token_factors(model, editor.layers, _batch(tok, edits, model.device, editor.cfg.max_length))
        editor.transform(factors)


def _dev_name(spec: str, specs: list[str]) -> str:
    """'zsre' or 'counterfact'; the whole spec when two dev files share a kind."""
    kind = spec.split(":")[0]
    return kind if sum(s.split(":")[0] == kind for s in specs) == 1 else spec


def save_checkpoint(out: Path, editor: MENDEditor, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig,
                    history: list[dict], best: dict | None) -> None:
    """Editor + optimizer state as safetensors and a JSON manifest: resumable without unpickling."""
    out.mkdir(parents=True, exist_ok=True)
    editor.save(out / "last", extra={"train": asdict(cfg), "step": step})
    tensors, scalars = {}, {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = float(v)
    save_file(tensors, out / "last" / "optimizer.safetensors")
    state = {"step": step, "optimizer_scalars": scalars, "history": history, "best": best, "train": asdict(cfg)}
    (out / "train_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def load_checkpoint(out: Path, editor: MENDEditor, opt: torch.optim.Optimizer) -> tuple[int, list, dict | None]:
    state = json.loads((out / "train_state.json").read_text())
    editor.load_state_dict(load_file(out / "last" / WEIGHTS_FILE))  # statistics included: never reset on resume
    tensors = load_file(out / "last" / "optimizer.safetensors")
    osd = opt.state_dict()
    for key, val in {**tensors, **state["optimizer_scalars"]}.items():
        pid, name = key.split(".", 1)
        osd["state"].setdefault(int(pid), {})[name] = torch.tensor(val) if not torch.is_tensor(val) else val
    opt.load_state_dict(osd)
    return state["step"], state["history"], state["best"]


def train(cfg: TrainConfig, resume: bool = True) -> Path:
    from .evaluate import (
        evaluate_mend,  # evaluation imports training helpers, not the other way round
    )

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    model, tok = load_base_model(cfg.model, cfg.dtype, cfg.device)
    train_recs = [r for spec in cfg.train for r in load_records(spec, cfg.max_records)]
    dev_recs = {_dev_name(spec, cfg.dev): load_records(spec, cfg.val_n, one_per_subject=True) for spec in cfg.dev}
    editor = MENDEditor.for_model(model, cfg.layers, rank=cfg.rank, init_alpha=cfg.init_alpha,
                                  precond_lambda=cfg.precond_lambda,
                                  model_fingerprint=model_fingerprint(model)).to(cfg.device)
    opt = torch.optim.Adam([{"params": [p for n, p in editor.named_parameters() if n != "log_alpha"], "lr": cfg.lr},
                            {"params": [editor.log_alpha], "lr": cfg.lr_alpha}])
    out = Path(cfg.out)
    step, history, best = 0, [], None
    if resume and (out / "train_state.json").exists():
        step, history, best = load_checkpoint(out, editor, opt)
        rng = random.Random(cfg.seed * 1_000_003 + step)  # a resumed run draws new batches, not the first ones again
        log.info("resumed %s at step %d", out, step)
    elif cfg.precond_lambda is not None:
        pool = rng.sample(train_recs, min(cfg.precond_prompts, len(train_recs)))
        editor.fit_preconditioner(model, tok, [q for r in pool for q in r.loc[:1]] + [r.edit for r in pool])
    if step == 0:
        warm_up_statistics(model, tok, editor, train_recs, cfg, rng)
    cache = PrefixCache(model, first_block(editor.layers)) if cfg.prefix_cache else None
    bar = tqdm(total=cfg.steps, initial=step, desc="mend train", dynamic_ncols=True)
    t0, bad = time.time(), 0
    while step < cfg.steps:
        editor.train()
        edits, outer, loc = sample_step(train_recs, cfg, rng)
        l_edit, l_loc, acc = edit_losses(model, tok, editor, edits, outer, loc, cache, editor.cfg.max_length)
        loss = cfg.c_edit * l_edit + cfg.c_loc * l_loc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if torch.isfinite(loss):
            torch.nn.utils.clip_grad_norm_(editor.parameters(), cfg.grad_clip)
            opt.step()
        step += 1
        alpha = editor.log_alpha.exp().mean().item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", edit=f"{acc['edit_acc']:.2f}", loc=f"{acc['loc_keep']:.2f}",
                        alpha=f"{alpha:.1e}")
        history.append({"step": step, "loss": loss.item(), "l_edit": l_edit.item(), "l_loc": l_loc.item(),
                        **acc, "alpha": alpha, "time": time.time() - t0})
        if step % cfg.val_every == 0 or step == cfg.steps:
            editor.eval()
            val = {k: evaluate_mend(model, tok, editor, recs) for k, recs in dev_recs.items()}
            score = sum(v["selection"] for v in val.values()) / len(val)
            history.append({"step": step, "val": val, "score": score})
            log.info("step %d val %s", step, json.dumps(val))
            bar.write(f"step {step} val score {score:.3f} " + " ".join(
                f"{k}: edit {v['edit']:.2f} reph {v['rephrase']:.2f} loc {v['loc']:.2f}" for k, v in val.items()))
            if best is None or score > best["score"]:
                best, bad = {"step": step, "score": score, "val": val}, 0
                editor.save(out / "best", extra={"train": asdict(cfg), "step": step, "val": val})
            else:
                bad += 1
            save_checkpoint(out, editor, opt, step, cfg, history, best)
            if bad >= cfg.patience:
                log.info("early stop at step %d (best %d)", step, best["step"])
                break
    bar.close()
    if cache is not None:
        log.info("prefix cache: %d hits, %d misses", cache.hits, cache.misses)
    return out / "best"
