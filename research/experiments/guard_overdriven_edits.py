"""The same share for edits made with 3x and 10x the learned step (12 zsRE dev edits).
Run: python research/experiments/guard_overdriven_edits.py weights/smollm2"""
import sys, torch, statistics
torch.set_num_threads(1)
from editor_core import *
from editor_core.canary import CanarySet, load_canaries
from service.settings import Settings
m,t=load_base_model(); ed=MENDEditor.load(sys.argv[1], m)
cs=CanarySet(m,t,load_canaries(Settings().canaries, 100), min(l.block for l in ed.layers))
recs=load_records("zsre:../shared/data/zsre/dev.json", 12)
base={n: p.detach().clone() for n,p in m.named_parameters() if n in ed.cfg.layers}
for k in (3.0, 10.0):
    ed.log_alpha.data += torch.log(torch.tensor(k))
    fr=[]
    for r in recs:
        d=ed.compute_delta(m,t,[r.edit]).compressed(0.03, torch.float16)
        ch,_=cs.check(d.updated(m)); fr.append(ch/len(cs))
    print(f'alpha x{k}: changed share min {min(fr):.2f} median {statistics.median(fr):.2f} max {max(fr):.2f}', flush=True)
    ed.log_alpha.data -= torch.log(torch.tensor(k))
