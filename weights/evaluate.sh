#!/usr/bin/env bash
# Reproduces weights/README.md's tables: every number there is printed by one of these commands.
# Usage: bash weights/evaluate.sh [EDITOR]   (from the repo root, with the venv active; ~1 h on 2 CPU cores)
set -euo pipefail
ED=${1:-weights/smollm2}
OUT=weights/results
mkdir -p $OUT
Z=zsre:../shared/data/zsre/dev.json
C=counterfact:../shared/data/counterfact/dev.json
run() { name=$1; shift; mend eval --editor $ED "$@" --json $OUT/$name.json | tee $OUT/$name.md; }
# Single edits, 500 records each
run zsre_mend_500 --data $Z --n 500 --method mend
run cf_mend_500 --data $C --n 500 --method mend
# MEND against FT and FT+KL on the same records (FT is ~10x slower per edit on this CPU: 100 records)
run zsre_vs_ft_100 --data $Z --n 100 --method mend --method ft --method ft-kl
run cf_vs_ft_100 --data $C --n 100 --method mend --method ft --method ft-kl --loc-pool counterfact:../shared/data/counterfact/train.json
# 25 edits in one update
run zsre_batch25 --data $Z --n 500 --batch-size 25 --method mend
# 100 edits one after another, then all re-checked (curve at 10, 25, 50, 100)
run zsre_seq100 --data $Z --sequential 100 --method mend
run cf_seq100 --data $C --sequential 100 --method mend
