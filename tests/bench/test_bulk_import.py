"""bench/bulk_import.py on the tiny random model and a small data folder: a server started, the fill imported
through `mend import`'s path, its costs measured, and a restart that comes back with every imported edit."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_million import ROOT, data_folder


def test_an_import_is_measured_and_survives_a_restart(tmp_path: Path):
    data = data_folder(tmp_path / "data")
    cmd = [sys.executable, "-m", "bench.bulk_import", "--smoke", "--n", "30", "--batch", "12", "--probes", "3",
           "--data", str(data), "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    res = json.loads((tmp_path / "bulk_import.json").read_text())["results"]
    assert res["items"] == 30 and res["imported"] + res["refused"] == 30 and res["imported"] > 0
    assert res["active_after_restart"] == res["imported"]
    assert res["edits_per_s"] > 0 and res["redis_bytes_per_edit"] > 0
