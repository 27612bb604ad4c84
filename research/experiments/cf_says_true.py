"""How often the UNEDITED model says CounterFact's TRUE answer (greedy, 8 tokens, reply starts with it), to the edit
prompt and to the first two paraphrases: what SmolLM2's own knowledge scores on the generation-based paraphrase check.

    python research/experiments/cf_says_true.py train 40
    python research/experiments/cf_says_true.py dev 100

Printed (2026-12-02, at 2162ee7):
    train 40 edit prompt says true 0.025 says new 0.0 / paraphrase says true 0.0375 says new 0.0125
"""
import sys, torch, json
from editor_core import load_base_model, load_records
from editor_core.fluency import normalized as norm
from editor_core.generation import prompt_ids
torch.set_num_threads(1)
model, tok = load_base_model()
tok.padding_side = "left"
split, n = sys.argv[1], int(sys.argv[2])
recs = load_records(f"counterfact:../shared/data/counterfact/{split}.json", n, one_per_subject=True)
def gen(prompts):
    out = []
    for i in range(0, len(prompts), 16):
        enc = tok(prompts[i:i+16], return_tensors="pt", padding=True)
        with torch.no_grad():
            g = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        out += tok.batch_decode(g[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out
ep = gen([r.edit.prompt for r in recs])
pp = gen([p for r in recs for p in r.rephrases[:2]])
says = lambda reply, t: norm(reply).startswith(norm(t))
print(split, n, "edit prompt says true", sum(says(a, r.true_target) for a, r in zip(ep, recs)) / n,
      "says new", sum(says(a, r.edit.target) for a, r in zip(ep, recs)) / n)
pr = [r for r in recs for _ in r.rephrases[:2]]
print("paraphrase says true", sum(says(a, r.true_target) for a, r in zip(pp, pr)) / len(pp),
      "says new", sum(says(a, r.edit.target) for a, r in zip(pp, pr)) / len(pp))
