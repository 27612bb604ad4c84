"""A/B in one process: /edit time with the few-rows vocabulary projection (editor_core.projection) on and off,
alternating edit by edit (each record edited once each way and rolled back), so that the machine's drift between
runs (the p50 of one code varied 820-1050 ms from run to run this session) falls on both alike.

    python research/experiments/projection_ab.py 14

Printed (2026-12-02, at 2162ee7, quiet 2-core CPU, 2 threads; zsRE dev records 1-14):
    few-rows projection p50 828 mean 850
    plain Linear p50 925 mean 927
    paired saving per edit: median 85 ms
"""
import tempfile, time, statistics, sys
from pathlib import Path
import editor_core.projection as P
from editor_core import load_records
from service.runtime import Runtime
from service.settings import Settings
rt = Runtime.start(Settings(data_dir=Path(tempfile.mkdtemp()), threads=2))
n = int(sys.argv[1])
recs = load_records("zsre:../shared/data/zsre/dev.json", n + 1, one_per_subject=True)
rt.edit([recs[0].edit], "p", "", True)
ms = {True: [], False: []}
for i, r in enumerate(recs[1:]):
    for on in ((True, False) if i % 2 else (False, True)):
        P.FEW_ROWS = 32 if on else 0
        t = time.perf_counter(); o = rt.edit([r.edit], "p", "", True); ms[on].append((time.perf_counter() - t) * 1000)
        rt.rollback(o.edit_id, None, "p", "")
for on, v in ms.items():
    print("few-rows projection" if on else "plain Linear", "p50", round(statistics.median(v)), "mean", round(statistics.mean(v)), sorted(round(x) for x in v))
d = [a - b for a, b in zip(ms[False], ms[True])]
print("paired saving per edit: median", round(statistics.median(d)), "ms")
rt.close()
