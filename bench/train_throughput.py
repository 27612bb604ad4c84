"""Item 6: editor training steps per second with and without the frozen-prefix cache, same config, one run.

The cache only pays once sequences repeat, so the pool is small (max_records): after about one pass over it
every edit, rephrase and locality sequence is cached. Both runs use the same seed, hence the same batches.
Steps/s comes from the training history's own clock (loop start to each step), which leaves out model
loading, the preconditioner fit and the final validation; the second half of the steps is the steady state.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Optional

import typer

from editor_core.train import TrainConfig, train

from .common import ZSRE, Profile, command_line, make_profile, save, setup_logging

log = logging.getLogger("bench.train")


def data_specs(p: Profile) -> tuple[str, str]:
    """The repo's zsRE files, or (where absent, e.g. in CI) a synthetic file of the same format."""
    if (ZSRE / "train.json").exists():
        return f"zsre:{ZSRE / 'train.json'}", f"zsre:{ZSRE / 'dev.json'}"
    rng, cities = random.Random(0), ["Rome", "Paris", "Madrid", "Oslo", "Lima", "Cairo"]
    recs = [{"subject": f"Person {i}", "src": f"Where was Person {i} born?", "alt": rng.choice(cities),
             "rephrase": f"What is the birthplace of Person {i}?", "answers": [rng.choice(cities)],
             "loc": f"nq question: what is {i} plus {i}", "loc_ans": str(2 * i)} for i in range(200)]
    path = p.out / "synthetic_zsre.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recs))
    return f"zsre:{path}", f"zsre:{path}"


def config(p: Profile, prefix_cache: bool) -> TrainConfig:
    train_spec, dev_spec = data_specs(p)
    out = p.out / "work" / f"train-cache-{prefix_cache}"
    shutil.rmtree(out, ignore_errors=True)
    # One validation at the very end (val_every = steps), few warm-up batches and preconditioner prompts:
    # they run before the clock starts, but cost wall time.
    return TrainConfig(model=p.model, train=[train_spec], dev=[dev_spec], out=str(out), rank=p.train_rank,
                       steps=p.train_steps, batch_size=4, max_records=p.train_pool, threads=p.threads,
                       warmup_batches=5, precond_prompts=50, val_every=p.train_steps, val_n=4, patience=1,
                       prefix_cache=prefix_cache, seed=0)


def steps_per_s(cfg: TrainConfig) -> dict:
    train(cfg, resume=False)
    history = json.loads((Path(cfg.out) / "train_state.json").read_text())["history"]
    t = [h["time"] for h in history if "loss" in h]  # seconds from loop start to the end of each step
    half = len(t) // 2
    return {"prefix_cache": cfg.prefix_cache, "steps": len(t), "steps_per_s": len(t) / t[-1],
            "steady_steps_per_s": (len(t) - half) / (t[-1] - t[half - 1])}


def main(smoke: bool = typer.Option(False, help="tiny random model, tiny counts"),
         model: Optional[str] = None, editor: Optional[str] = None, threads: Optional[int] = None,
         out: Optional[Path] = None) -> None:
    """Train the same editor config twice, with and without the prefix cache; report steps/s."""
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    rows = [steps_per_s(config(p, cache)) for cache in (False, True)]
    for r in rows:
        log.info("prefix cache %s: %.3f steps/s (steady %.3f)", r["prefix_cache"], r["steps_per_s"],
                 r["steady_steps_per_s"])
    save(p, "train_throughput", {"rows": rows, "speedup": rows[1]["steady_steps_per_s"] / rows[0]["steady_steps_per_s"],
                                 "pool": p.train_pool, "rank": p.train_rank}, command_line())


if __name__ == "__main__":
    typer.run(main)
