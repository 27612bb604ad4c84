"""What greedy generation says after one scoped edit, through the service's Runtime in process (default settings).

    python research/experiments/gen_probe.py zsre 30

The 20-edit steps in research/NOTEBOOK.md were measured when this script had its own copy of the text rules, which
counted a repeated target without overlaps; it now uses editor_core.fluency, as bench/says.py does.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from editor_core import join, load_records
from editor_core.fluency import ngram_entropy as entropy
from editor_core.fluency import normalized as norm
from editor_core.fluency import repeats
from service.runtime import Runtime
from service.settings import Settings


def main(kind: str, n: int) -> None:
    path = {"zsre": "zsre:../shared/data/zsre/dev.json", "cf": "counterfact:../shared/data/counterfact/dev.json"}[kind]
    recs = load_records(path, n, one_per_subject=True)
    data = Path(tempfile.mkdtemp())
    rt = Runtime.start(Settings(data_dir=data, threads=2))
    gen = lambda p=None, m=None, k=32: rt.generate(p, m, k, 0.0, 1.0, None, [])[0].text
    chat = lambda q: [{"role": "user", "content": q}]
    rows, examples = [], []
    t0 = time.time()
    for rec in recs:
        tgt = rec.edit.target
        paras = rec.rephrases[:2]
        locs = [l.prompt for l in rec.loc[:2]]
        base_long = gen(rec.edit.prompt, k=64)
        base_loc = [gen(p) for p in locs]
        # the unedited model continuing the prompt with the new answer written in: what "the text after the
        # answer reads like the unedited model's" compares with
        joined = "".join(join(rec.edit.prompt, tgt))
        ref_long = join(rec.edit.prompt, tgt)[1] + gen(joined, k=64 - len(rt.tokenizer(tgt.strip())["input_ids"]))
        out = rt.edit([rec.edit], "probe", "", True)
        r = {}
        long = gen(rec.edit.prompt, k=64)
        r["prompt"] = norm(long).startswith(norm(tgt))
        r["para"] = np.mean([norm(gen(p)).startswith(norm(tgt)) for p in paras]) if paras else np.nan
        c = gen(m=chat(rec.edit.prompt))
        r["chat"] = norm(tgt) in norm(c)
        r["chat_para"] = np.mean([norm(tgt) in norm(gen(m=chat(p))) for p in paras]) if paras else np.nan
        r["loc"] = np.mean([gen(p) == b for p, b in zip(locs, base_loc)]) if locs else np.nan
        r["rep"], r["rep0"] = repeats(long, tgt), repeats(base_long, tgt)
        r["ent"], r["ent0"] = entropy(long), entropy(base_long)
        r["rep_ref"], r["ent_ref"] = repeats(ref_long, tgt), entropy(ref_long)
        r["edit_ms"] = out.elapsed_ms
        rows.append(r)
        if len(examples) < 6:
            examples.append({"prompt": rec.edit.prompt, "target": tgt, "after": long, "ref": ref_long, "chat": c})
        rt.rollback(out.edit_id, None, "probe", "")
    rt.close()
    shutil.rmtree(data)
    mean = {k: round(float(np.nanmean([r[k] for r in rows])), 3) for k in rows[0]}
    mean["edit_ms_p50"] = round(float(np.median([r["edit_ms"] for r in rows])), 1)
    print(json.dumps({"kind": kind, "n": len(rows), "s_per_record": round((time.time() - t0) / len(rows), 1), **mean}))
    for e in examples:
        print(json.dumps(e))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
