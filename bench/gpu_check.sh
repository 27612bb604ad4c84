#!/usr/bin/env bash
# The first run on a machine with one CUDA GPU (issue 30, item 7): install, then bench/gpu_check.py (CPU and GPU
# replies compared, the GPU server at 1/8/16 clients, a device map split between GPU and CPU); one table.
# Under 10 minutes on a warm pip cache. Extra arguments go to bench.gpu_check (e.g. --seconds 10).
set -euo pipefail
cd "$(dirname "$0")/.."
# PyPI's torch wheel for Linux carries CUDA: no index to name here (the Makefile's TORCH_INDEX stays empty).
make install >/dev/null
.venv/bin/python -c 'import torch, sys; ok = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", ok,
torch.cuda.get_device_name(0) if ok else ""); sys.exit(0 if ok else 1)' || { echo "no CUDA device: nothing to check"; exit 1; }
exec timeout 540 .venv/bin/python -m bench.gpu_check --device cuda "$@"
