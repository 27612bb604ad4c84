"""bench/gpu_check.py without a GPU: the tiny random model, "the device" being the CPU too, so every step runs (two
servers asked the same questions, the load levels, the device-map start) and the table and JSON come out; equal
replies are then required, as the arithmetic is the same."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_million import ROOT


def test_the_gpu_check_runs_every_step_on_the_cpu(tmp_path: Path):
    cmd = [sys.executable, "-m", "bench.gpu_check", "--smoke", "--device", "cpu", "--clients", "1,2",
           "--seconds", "2", "--tokens", "4", "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "greedy replies equal to the CPU" in run.stdout and "2 clients" in run.stdout
    res = json.loads((tmp_path / "gpu_check.json").read_text())["results"]
    assert res["replies_same"] == 1.0 and res["replies_differ"] == {}
    assert [r["clients"] for r in res["load"]] == [1, 2] and all(r["requests"] > 0 for r in res["load"])
    assert res["device_map"]["started"] and res["device_map"]["replies_same_as_cpu"] == 1.0
