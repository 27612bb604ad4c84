"""bfloat16 against float32 on this CPU, in process (issue 15 item 3): does greedy decoding of 16 zsRE questions as one
batch (editor_core.batching) say what each says alone, in either dtype; how many bf16 replies differ from float32's;
and plain `model.generate` tokens/s at batch 1 and 8 (32 new tokens), the dtypes interleaved, median of 3.

    python -m bench.bf16_generate     (from the repo root; about 4 min)

Measured 2026-12-02, 1 thread, the other core running the test suite: batched differs from alone 0/16 (float32),
1/16 (bfloat16); bf16 differs from float32 2/16; tokens/s float32 21.4 / 81.0, bfloat16 27.0 / 126.6 (batch 1 / 8).
A second run, beside profiling jobs: the same counts; tokens/s float32 15.5 / 57.5, bfloat16 18.7 / 78.0.
"""
from __future__ import annotations

import json
import statistics
import time

import torch

from editor_core import load_base_model
from editor_core.batching import complete
from editor_core.data import load_records
from editor_core.evaluate import local_generate
from editor_core.generation import prompt_ids


def main() -> None:
    torch.set_num_threads(1)
    prompts = [r.edit.prompt for r in load_records("zsre:../shared/data/zsre/dev.json", 16, one_per_subject=True)]
    models = {d: load_base_model(dtype=d) for d in ("float32", "bfloat16")}
    out, replies = {}, {}
    for d, (model, tok) in models.items():
        replies[d] = [complete(model, tok, prompt_ids(tok, p, None), 24).text for p in prompts]
        batched = local_generate(model, tok)([(p, None, 24) for p in prompts])  # one batch, as the service decodes
        out[d] = {"batched_differs_from_alone": sum(a != b for a, b in zip(replies[d], batched))}
    out["bf16_text_differs_from_fp32"] = sum(a != b for a, b in zip(replies["float32"], replies["bfloat16"]))
    rates = {d: {1: [], 8: []} for d in models}
    for _ in range(3):  # the dtypes interleaved, round by round
        for d, (model, tok) in models.items():
            for size in (1, 8):
                tok.padding_side = "left"  # generate appends on the right
                enc = tok(prompts[:size], return_tensors="pt", padding=True)
                tok.padding_side = "right"
                t = time.perf_counter()
                model.generate(**enc, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                               pad_token_id=tok.pad_token_id)
                rates[d][size].append(size * 32 / (time.perf_counter() - t))
    out["tokens_per_s_median_of_3"] = {d: {n: round(statistics.median(v), 1) for n, v in r.items()}
                                       for d, r in rates.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
