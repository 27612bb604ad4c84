"""Item 1: edit latency through the library (compute_delta + apply) for batches of 1, 10 and 25, against its
physical floor, one plain forward+backward of the same prompts, and against the FT baseline.

MEND and the floor are timed alternately on the same batch, so that drift on a shared CPU (another job,
thermal state) lands on both; the model is restored bit for bit after every applied edit, outside the timing.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
import typer
from torch.profiler import ProfilerActivity, profile
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor_core import EditRequest, MENDEditor, load_base_model, restore, snapshot
from editor_core.baselines import finetune_delta
from editor_core.evaluate import forward_backward_ms

from .common import Profile, command_line, edit_pairs, make_profile, save, setup_logging, summary

log = logging.getLogger("bench.edit_latency")


def timed_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def mend_edit(model: PreTrainedModel, tok: PreTrainedTokenizerBase, editor: MENDEditor,
              reqs: list[EditRequest]) -> None:
    editor.compute_delta(model, tok, reqs).apply(model)


def ft_edit(model: PreTrainedModel, tok: PreTrainedTokenizerBase, editor: MENDEditor,
            reqs: list[EditRequest]) -> None:
    # The baseline as `mend eval --method ft` runs it: Adam on the same matrices, up to 25 steps.
    finetune_delta(model, tok, editor.layers, reqs, max_length=editor.cfg.max_length).apply(model)


def floor_ms(model: PreTrainedModel, tok: PreTrainedTokenizerBase, reqs: list[EditRequest], max_length: int) -> float:
    return forward_backward_ms(model, tok, reqs, max_length)  # the same floor `mend eval` reports


def batches(n_batches: int, size: int) -> list[list[EditRequest]]:
    pairs = edit_pairs(n_batches * size)
    return [[EditRequest(**e) for e in pairs[i * size:(i + 1) * size]] for i in range(n_batches)]


def measure_size(p: Profile, model: PreTrainedModel, tok: PreTrainedTokenizerBase, editor: MENDEditor,
                 size: int) -> dict:
    """One warm-up batch, then `edit_repeats` batches of distinct edits, MEND and floor alternately."""
    base = snapshot(model, [l.name for l in editor.layers])
    max_len = editor.cfg.max_length
    mend, floor, ft = [], [], []
    for i, reqs in enumerate(batches(p.edit_repeats + 1, size)):
        m = timed_ms(lambda reqs=reqs: mend_edit(model, tok, editor, reqs))
        restore(model, base)
        f = floor_ms(model, tok, reqs, max_len)
        if i > 0:
            mend.append(m)
            floor.append(f)
        if i <= p.ft_repeats:
            t = timed_ms(lambda reqs=reqs: ft_edit(model, tok, editor, reqs))
            restore(model, base)
            ft += [t] if i > 0 else []
    out = {"batch": size, "mend_ms": summary(mend), "floor_ms": summary(floor), "ft_ms": summary(ft)}
    out["mend_over_floor"] = out["mend_ms"]["p50"] / out["floor_ms"]["p50"]
    out["ft_over_mend"] = out["ft_ms"]["p50"] / out["mend_ms"]["p50"]
    out["ft_over_floor"] = out["ft_ms"]["p50"] / out["floor_ms"]["p50"]
    log.info("batch %d: MEND p50 %.1f ms, floor p50 %.1f ms (%.2fx), FT p50 %.1f ms (%.1fx MEND)", size,
             out["mend_ms"]["p50"], out["floor_ms"]["p50"], out["mend_over_floor"], out["ft_ms"]["p50"],
             out["ft_over_mend"])
    return out


def profile_tables(p: Profile, model: PreTrainedModel, tok: PreTrainedTokenizerBase, editor: MENDEditor) -> Path:
    """torch.profiler's operator tables for one single MEND edit and one floor step: where the time goes."""
    reqs = batches(1, 1)[0]
    base = snapshot(model, [l.name for l in editor.layers])
    path = p.out / "edit_latency_profile.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for name, fn in [("MEND compute_delta+apply", lambda: mend_edit(model, tok, editor, reqs)),
                         ("forward+backward floor", lambda: floor_ms(model, tok, reqs, editor.cfg.max_length))]:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            restore(model, base)
            fh.write(f"== {name}\n{prof.key_averages().table(sort_by='cpu_time_total', row_limit=25)}\n")
    return path


def main(smoke: bool = typer.Option(False, help="tiny random model, tiny counts"),
         model: Optional[str] = None, editor: Optional[str] = None, threads: Optional[int] = None,
         out: Optional[Path] = None,
         with_profile: bool = typer.Option(True, help="also write torch.profiler tables")) -> None:
    """Time MEND, the forward+backward floor and FT on the same batches of 1, 10 and 25 edits."""
    setup_logging()
    p = make_profile(smoke, model, editor, threads, out)
    torch.set_num_threads(p.threads)
    torch.manual_seed(0)
    m, tok = load_base_model(p.model)
    ed = MENDEditor.load(Path(p.editor), m)
    rows = [measure_size(p, m, tok, ed, b) for b in p.edit_batches]
    if with_profile:
        log.info("profile tables in %s", profile_tables(p, m, tok, ed))
    save(p, "edit_latency", {"sizes": rows, "edited_layers": len(ed.layers)}, command_line())


if __name__ == "__main__":
    typer.run(main)
