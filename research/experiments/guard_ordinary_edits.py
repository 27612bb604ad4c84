"""Share of the 100 default canaries whose answer an ordinary edit changes (30 zsRE + 10 CounterFact dev edits).
Run: python research/experiments/guard_ordinary_edits.py weights/smollm2"""
import sys, torch, statistics, time
torch.set_num_threads(1)
from editor_core import *
from editor_core.canary import CanarySet, load_canaries
from service.settings import Settings
m,t=load_base_model(); ed=MENDEditor.load(sys.argv[1], m)
s=Settings()
t0=time.time(); cs=CanarySet(m,t,load_canaries(s.canaries, 100), min(l.block for l in ed.layers)); print('build', time.time()-t0)
recs=load_records("zsre:../shared/data/zsre/dev.json", 30)+load_records("counterfact:../shared/data/counterfact/dev.json", 10)
fr=[]; ts=[]
for r in recs:
    d=ed.compute_delta(m,t,[r.edit]).compressed(0.03, torch.float16)
    t0=time.time(); ch,_=cs.check(d.updated(m)); ts.append(time.time()-t0); fr.append(ch/len(cs))
print('changed share: min %.2f median %.2f p90 %.2f max %.2f' % (min(fr), statistics.median(fr), sorted(fr)[int(.9*len(fr))], max(fr)))
print('check s p50', statistics.median(ts))
print(sorted(fr))
