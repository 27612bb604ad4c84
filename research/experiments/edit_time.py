"""Time of one /edit at the default (scoped) settings, in process: 7 zsRE dev edits after a warm-up, under cProfile.

    python research/experiments/edit_time.py
Measured 2026-12-01 on the quiet 2-core CPU: 681-997 ms, p50 893 ms (README status).
2026-12-02, after tuning and word ends (66b9850): 1.78-4.75 s, p50 2.40 s.
2026-12-02, edits running only the edited blocks (PrefixCache), word ends only where the answer runs on (7ba11f0):
1.13-1.66 s, p50 1.36 s; without the profiler 1.06-1.67 s, p50 1.28 s.
"""
import tempfile
import time
from pathlib import Path
from editor_core import load_records
from service.runtime import Runtime
from service.settings import Settings
import cProfile
import pstats
rt = Runtime.start(Settings(data_dir=Path(tempfile.mkdtemp()), threads=2))
recs = load_records("zsre:../shared/data/zsre/dev.json", 8, one_per_subject=True)
rt.edit([recs[0].edit], "p", "", True)
ms = []
pr = cProfile.Profile()
for r in recs[1:]:
    pr.enable(); t = time.perf_counter(); o = rt.edit([r.edit], "p", "", True); ms.append((time.perf_counter()-t)*1000); pr.disable()
print(sorted(ms))
pstats.Stats(pr).sort_stats("cumulative").print_stats(25)
rt.close()
