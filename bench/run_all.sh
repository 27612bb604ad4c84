#!/usr/bin/env bash
# Every benchmark of issue 5 and the reliability suite of issue 13 in one run on this machine, then
# bench/RESULTS.md rewritten from the measurements.
#   bench/run_all.sh                 full size: SmolLM2 + weights/smollm2, 10/100/1000-edit logs (about an hour)
#   bench/run_all.sh --smoke         tiny random model, tiny counts (CI); report in bench/out/smoke/RESULTS.md
# Extra arguments go to every script, e.g. --editor runs/main/best --threads 2. Run it on an otherwise idle machine:
# the numbers are ratios measured side by side, but another job on the two cores still moves them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
smoke=()
for a in "$@"; do [ "$a" = "--smoke" ] && smoke=(--smoke); done
python -m bench.edit_latency "$@"
python -m bench.train_throughput "$@"
python -m bench.populate "$@"            # the 10/100/1000-edit logs rollback, restart and log_size start from
python -m bench.generate_throughput "$@"   # issue 15: the service's batching against model.generate
python -m bench.generate_throughput --dtype bfloat16 "$@"
python -m bench.rollback "$@"
python -m bench.restart "$@"
python -m bench.log_size "$@"
python -m bench.reliability "$@"         # issue 13: kill -9, a killed Redis, two replicas, mixed clients, fuzzing
python -m bench.report "${smoke[@]}"
