"""bench/edit_memory.py on the tiny random model: a real `mend serve`, its memory read as edits accumulate."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_says import RECORDS

ROOT = Path(__file__).resolve().parents[2]


def test_the_servers_memory_is_read_every_few_edits(tmp_path: Path):
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(RECORDS))
    cmd = [sys.executable, "-m", "bench.edit_memory", "--smoke", "--data", f"zsre:{data}", "-n", "3", "--every", "2",
           "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    res = json.loads((tmp_path / "edit_memory_fixed_3.json").read_text())["results"]
    assert [r["edits"] for r in res["curve"]] == [2, 3] and res["start_rss_mib"] > 0
    assert all(r["server_rss_mib"] > 0 and r["stored_mib"] > 0 and r["edit_ms_p50"] > 0 for r in res["curve"])
    assert "mmap threshold fixed at 131072" in (tmp_path / "edit_memory" / "server.log").read_text()


def test_edits_on_a_copy_of_another_servers_log(tmp_path: Path):
    """--log: the server starts on a copy of a log (here 3 edits) and the new edits go on top of those; the log
    copied from is left as it was."""
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(RECORDS))
    base = [sys.executable, "-m", "bench.edit_memory", "--smoke", "--data", f"zsre:{data}", "--every", "2"]
    first = subprocess.run([*base, "-n", "3", "--out", str(tmp_path)], cwd=ROOT, timeout=600, capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr[-4000:]
    source = tmp_path / "edit_memory" / "data"
    before = {f.relative_to(source): f.read_bytes() for f in (source / "redis").glob("*.aof*")}
    assert before
    second = subprocess.run([*base, "-n", "2", "--log", str(source), "--out", str(tmp_path / "on")], cwd=ROOT,
                            timeout=600, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-4000:]
    res = json.loads((tmp_path / "on" / "edit_memory_fixed_2_on3.json").read_text())["results"]
    assert res["edits_held"] == 3 and res["replay_s"] is not None and res["edit_ms_p50"] > 0
    assert {f.relative_to(source): f.read_bytes() for f in (source / "redis").glob("*.aof*")} == before
