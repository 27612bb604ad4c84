"""bench/generate_throughput.py in its tiny form, end to end: three real `mend serve` processes (no edits, scoped and
in-place logs built through /edit), streaming clients, plain model.generate beside them, edits timed under load, and
the section bench/report.py writes from it. The numbers are the tiny model's; the test checks the mechanics."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_service_and_model_generate_are_measured_side_by_side(tmp_path: Path):
    cmd = [sys.executable, "-m", "bench.generate_throughput", "--smoke", "--window", "1.5", "--out", str(tmp_path)]
    # About a minute on two busy cores; the limit only stops a hung run.
    run = subprocess.run(cmd, cwd=ROOT, timeout=400, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    doc = json.loads((tmp_path / "generate_throughput.json").read_text())
    assert doc["command"].startswith("python -m bench.generate_throughput --smoke")
    d = doc["results"]
    s = d["sizes"]
    measured = {(x["kind"], x["config"], x["prompts"], x["n"]) for x in d["table"]}
    assert measured == ({("service", c, "facts", n) for c in ("none", "scoped", "inplace") for n in s["clients"]}
                        | {("generate", "none", p, b) for p in ("facts", "questions") for b in s["hf_batches"]}
                        | {("service", "none", "questions", n) for n in s["side_clients"]}
                        | {("service", c, "edited", n) for c in ("none", "scoped") for n in s["side_clients"]})
    for x in d["table"]:
        assert x["requests"] > 0 and x["tokens_per_s"] > 0 and 0 < x["tokens_per_request"] <= s["new_tokens"]
        assert 0 < x["ttft_p50_ms"] <= x["ttft_p95_ms"] and x["ttft_p50_ms"] <= x["latency_p50_ms"]
    assert all(v > 0 for k, v in d["ratios"].items())
    for server in ("none", "inplace"):
        assert d["edits"][server]["idle_ms"]["n"] == d["edits"][server]["loaded_ms"]["n"] == s["edits_timed"]

    report = subprocess.run([sys.executable, "-m", "bench.report", "--smoke", "--results", str(tmp_path)], cwd=ROOT,
                            timeout=60, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## 2. Generation: the service (continuous batching) against model.generate" in text
    assert "| goal (issue 15) |" in text and "python -m bench.generate_throughput --smoke" in text
