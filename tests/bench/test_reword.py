"""bench/reword.py end to end on the tiny random model: a real `mend serve` at its default (scoped) settings."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_says import RECORDS, ROOT


def test_the_latency_of_a_new_wording_comes_out_of_a_real_server(tmp_path: Path):
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(RECORDS))
    cmd = [sys.executable, "-m", "bench.reword", "--smoke", "--data", f"zsre:{data}", "-n", "2", "--out",
           str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    res = json.loads((tmp_path / "reword.json").read_text())["results"]
    assert res["n"] == 2
    for key in ("unedited_rephrase", "edit", "edit_prompt", "rephrase_first", "rephrase_again"):
        assert res[f"{key}_ms"]["p50"] > 0, key
