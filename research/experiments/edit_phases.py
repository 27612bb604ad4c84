"""Where an /edit's time goes: wall time per phase (wrapped functions; nested phases count in their parents too),
per edit, over 12 zsRE dev edits after a warm-up, the service's Runtime in process, 2 threads.

    python research/experiments/edit_phases.py 12

Printed (2026-12-02, quiet CPU; the machine drifts by ~20% between runs, see projection_ab.py):
    at 774b3e6 (before the few-rows projection): p50 1018 ms; Scope.compute 842, edit_forms 367 (of which the pass
      through blocks 0-26 ~300), MEND compute_deltas 270, scores before+after 134, step checks 100, keys 61
    at 2162ee7: p50 821 ms; Scope.compute 719, edit_forms 333, blocks 0-26 308 per edit (13 passes for 12 edits),
      MEND 218, scores 78, step checks 74, keys 52
"""
import tempfile, time, functools, collections, statistics, sys
from pathlib import Path
from editor_core import load_records
from editor_core.prefix_cache import PrefixCache
from editor_core.scope import Scope
from editor_core.mend import MENDEditor
from service.runtime import Runtime
from service.settings import Settings
import service.runtime as R

spent = collections.Counter(); calls = collections.Counter()
def wrap(owner, name, label):
    f = getattr(owner, name)
    @functools.wraps(f)
    def g(*a, **k):
        t = time.perf_counter()
        try: return f(*a, **k)
        finally: spent[label] += time.perf_counter() - t; calls[label] += 1
    setattr(owner, name, g)
wrap(PrefixCache, "_compute", "prefix blocks 0-26")
wrap(Scope, "_pooled", "keys blocks 0-10")
wrap(Scope, "edit_forms", "edit_forms")
wrap(MENDEditor, "compute_deltas", "MEND compute_deltas")
wrap(Scope, "_takes", "step checks")
wrap(Scope, "_tuned", "tuning")
wrap(Scope, "compute", "Scope.compute")
wrap(Runtime, "_scores", "scores pre+post")
wrap(Runtime, "_write", "_write (compute+log)")
wrap(Runtime, "maybe_checkpoint", "checkpoint")
rt = Runtime.start(Settings(data_dir=Path(tempfile.mkdtemp()), threads=2))
n = int(sys.argv[1]) if len(sys.argv) > 1 else 12
recs = load_records("zsre:../shared/data/zsre/dev.json", n + 1, one_per_subject=True)
rt.edit([recs[0].edit], "p", "", True)
spent.clear(); calls.clear()
ms = []
for r in recs[1:]:
    t = time.perf_counter(); rt.edit([r.edit], "p", "", True); ms.append((time.perf_counter() - t) * 1000)
print("edit ms sorted:", [round(x) for x in sorted(ms)], "p50", round(statistics.median(ms)))
for k, v in spent.most_common():
    print(f"{k:28s} {v / len(ms) * 1000:7.0f} ms/edit  ({calls[k]} calls)")
rt.close()
