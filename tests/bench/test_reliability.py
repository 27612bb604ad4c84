"""bench/reliability.py in its tiny form, end to end: real servers on 127.0.0.1 at the default (scoped) settings, a
real kill -9 of a server and of its embedded Redis, two replicas on one Redis, 16 mixed clients for 10 s and
schemathesis at 2 examples per operation. Every figure that must be zero is zero."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def server_tracebacks(folder: Path) -> list[str]:
    """The servers' own account of a 5xx: CI keeps only this test's output, not the servers' logs."""
    text = "\n".join(p.read_text(errors="replace") for p in folder.rglob("*.log"))
    return [block[-2500:] for block in text.split("Traceback")[1:]][:3]


def test_no_acknowledged_edit_is_lost_doubled_or_half_applied(tmp_path: Path):
    cmd = [sys.executable, "-m", "bench.reliability", "--smoke", "--cycles", "2", "--seconds", "10",
           "--replica-edits", "10", "--fuzz-examples", "2", "--out", str(tmp_path)]
    # About 1.5 minutes on two busy cores; the limit only stops a hung run.
    run = subprocess.run(cmd, cwd=ROOT, timeout=420, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    doc = json.loads((tmp_path / "reliability.json").read_text())
    assert doc["command"].startswith("python -m bench.reliability --smoke")
    r = doc["results"]

    kill9 = r["kill9"]
    assert kill9["cycles"] == 2 and kill9["acknowledged"] > 0
    assert {k: kill9[k] for k in ("lost", "half_applied", "duplicated", "hash_mismatches", "unacknowledged_in_log",
                                  "retries_not_201")} == dict.fromkeys(("lost", "half_applied", "duplicated",
                                                                        "hash_mismatches", "unacknowledged_in_log",
                                                                        "retries_not_201"), 0)

    redis_kill = r["redis_kill"]
    assert redis_kill["acknowledged"] > 0 and redis_kill["ready_after"] == 200
    assert [redis_kill[k] for k in ("lost", "not_resumed", "other_5xx", "half_applied", "duplicated")] == [0] * 5
    assert all(0 < s < 60 for s in redis_kill["recovery_s"])

    replicas = r["replicas"]
    assert replicas["acknowledged"] == replicas["edits"] == 10
    assert replicas["versions"] == [10, 10] == [replicas["log_length"]] * 2
    assert replicas["hashes_equal"] and replicas["events_equal_keys"]
    assert [replicas[k] for k in ("lost", "duplicated", "half_applied", "unacknowledged_in_log")] == [0] * 4

    mixed = r["mixed"]
    assert mixed["generate"] > 0 and mixed["edit"] > 0 and mixed["clients"] == 16
    assert [mixed[k] for k in ("errors", "torn_reads", "lost", "half_applied")] == [0] * 4, (
        mixed["error_samples"], server_tracebacks(tmp_path / "work" / "reliability" / "mixed"))
    assert mixed["version_accounted"]

    fuzz = r["fuzz"]
    assert fuzz["requests"] > 0
    assert [fuzz[k] for k in ("server_errors", "no_response", "exit_code")] == [0] * 3
