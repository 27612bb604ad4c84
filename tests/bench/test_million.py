"""bench/million.py on the tiny random model: the fill (real records first, then generated questions over distinct
names), keys cached and reused, and the codebook timed and measured at each point."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_fill_is_real_records_then_distinct_generated_questions():
    from bench.million import fill, real_questions

    real = real_questions()
    questions = fill(len(real) + 500)
    assert questions[: len(real)] == real and len(set(q for q, _ in questions)) == len(questions)
    assert all("{}" not in q for q, _ in questions[len(real):])


def test_points_are_measured_and_keys_are_kept_for_the_next_run(tmp_path: Path):
    cmd = [sys.executable, "-m", "bench.million", "--smoke", "--points", "100,400", "--n-requests", "5",
           "--out", str(tmp_path)]
    for _ in range(2):  # the second run reads the keys the first computed
        run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-4000:]
    assert run.stderr.count("keys 0-400") == 0 and len(list((tmp_path / "million").rglob("*.safetensors"))) == 1
    res = json.loads((tmp_path / "million_keys.json").read_text())["results"]
    assert [p["edits"] for p in res["points"]] == [100, 400]
    assert all(p["select_ms_p50"] > 0 and p["add_us_per_edit"] > 0 for p in res["points"])
