"""bench/says.py end to end on the tiny random model: a real `mend serve` at its default (scoped) settings."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generation_scores_come_out_of_a_real_server(tmp_path: Path):
    cmd = [sys.executable, "-m", "bench.says", "--smoke", "-n", "2", "--out", str(tmp_path), "--sequential"]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=600, capture_output=True)
    doc = json.loads((tmp_path / "says_zsre_scoped_seq2.json").read_text())
    res = doc["results"]
    assert doc["command"].startswith("python -m bench.says") and res["n"] == 2 and res["method"] == "scoped"
    for key in ("prompt", "rephrase", "chat", "chat_rephrase", "unchanged", "repeat", "repeat_unedited"):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["edit_ms_p50"] > 0
