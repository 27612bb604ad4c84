"""Edit quality and logged size of raw vs SVD-truncated float16 deltas (30 zsRE dev records).
Run: python research/experiments/delta_compression.py weights/smollm2"""
import sys, torch, statistics
torch.set_num_threads(1)
from editor_core import *
from editor_core.evaluate import evaluate
m,t=load_base_model(); ed=MENDEditor.load(sys.argv[1], m)
recs=load_records("zsre:../shared/data/zsre/dev.json", 30)
names=[l.name for l in ed.layers]
for tag, f in [("raw", lambda d: d), ("svd1e-2 fp16", lambda d: d.compressed(1e-2, torch.float16)), ("svd3e-2 fp16", lambda d: d.compressed(3e-2, torch.float16)), ("svd1e-1 fp16", lambda d: d.compressed(1e-1, torch.float16))]:
    sizes=[]
    def meth(rs):
        d=f(ed.compute_delta(m,t,[r.edit for r in rs])); sizes.append(len(d.to_bytes())); return d
    r=evaluate(m,t,recs,meth,names)['summary']
    print(tag, {k: round(r[k],3) for k in ('edit','rephrase','loc','loc_kl')}, 'KB', round(statistics.mean(sizes)/1e3,1), flush=True)
