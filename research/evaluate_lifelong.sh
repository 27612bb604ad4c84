#!/usr/bin/env bash
# Reproduces research/NOTEBOOK.md's "Lifelong editing" tables (issue 7). From the repo root:
#   bash research/evaluate_lifelong.sh            # library: 1,000 sequential edits, both methods, both data sets
#   bash research/evaluate_lifelong.sh cf300      # CounterFact at 300 edits (what research/NOTEBOOK.md reports:
#                                                # 1,000 CounterFact edits did not fit this session's CPU time)
#   bash research/evaluate_lifelong.sh http       # the same zsRE story through a running service (POST /edit x1000)
# Deltas are compressed exactly as the service logs them (--delta-rel-tol 0.03 --delta-dtype float16).
# One thread each; on this 2-core machine each 1,000-edit run takes 10-30 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export OMP_NUM_THREADS=1
ED=${ED:-weights/smollm2}
OUT=research/results
mkdir -p $OUT
C="--delta-rel-tol 0.03 --delta-dtype float16"
case "${1:-sequential}" in
  sequential)
    for d in zsre counterfact; do
      for m in mend-scoped mend; do
        mend eval --editor $ED --data $d:../shared/data/$d/dev.json --n 1000 --sequential 1000 --method $m $C \
          --json $OUT/${d}_seq1000_$m.json
      done
    done ;;
  cf300)
    for m in mend-scoped mend; do
      mend eval --editor $ED --data counterfact:../shared/data/counterfact/dev.json --n 300 --sequential 300 \
        --method $m $C --json $OUT/counterfact_seq300_$m.json
    done ;;
  http)
    python -m bench.lifelong_story --data zsre:../shared/data/zsre/dev.json -k 1000 --method scoped \
      --library $OUT/zsre_seq1000_mend-scoped.json   # the server's data folder stays under bench/out
    cp bench/out/full/lifelong_zsre_scoped_1000.json $OUT/ ;;
esac
