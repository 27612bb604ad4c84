"""Untrained editor, statistics warmed up: edit success vs locality at several steps α, with and without the
input preconditioner (20 zsRE dev records). Run from the repo root: python research/experiments/precond_vs_plain.py"""
import sys, torch, math, random, time
from editor_core import *
from editor_core.train import TrainConfig, warm_up_statistics
from editor_core.evaluate import evaluate
torch.set_num_threads(2)
m,t = load_base_model()
rng=random.Random(0)
train = load_records("zsre:../shared/data/zsre/train.json", 2500) + load_records("counterfact:../shared/data/counterfact/train.json", 2500)
for lam in [0.01, None]:
    ed = MENDEditor.for_model(m, precond_lambda=lam)
    if lam: 
        pool=rng.sample(train, 300); t0=time.time(); ed.fit_preconditioner(m,t,[q for r in pool for q in r.loc[:1]]+[r.edit for r in pool]); print('fit',time.time()-t0)
    warm_up_statistics(m,t,ed,train,TrainConfig(warmup_batches=25),rng); ed.eval()
    recs = load_records("zsre:../shared/data/zsre/dev.json", 20)
    for a in [1e-6, 1e-5, 1e-4, 1e-3]:
        ed.log_alpha.data.fill_(math.log(a))
        r=evaluate(m,t,recs,lambda rs: ed.compute_delta(m,t,[x.edit for x in rs]),[l.name for l in ed.layers])['summary']
        print(lam, a, {k: round(v,3) for k,v in r.items() if k in ('edit','rephrase','loc','loc_token','loc_kl')}, flush=True)
