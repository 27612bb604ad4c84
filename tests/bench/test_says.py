"""bench/says.py end to end on the tiny random model: a real `mend serve` at its default (scoped) settings."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.says import spread

ROOT = Path(__file__).resolve().parents[2]


# Three records in the zsRE format: the test needs no data folder beside the checkout.
RECORDS = [{"subject": "Federico Almerares", "src": "Where was Federico Almerares born?", "rephrase":
            "Where's Federico Almerares born?", "alt": "Madrid", "answers": ["Mar del Plata"],
            "loc": "nq question: the roman name for a liberal arts education is known as",
            "loc_ans": "artes liberales"},
           {"subject": "Welcome Party", "src": "What series is Welcome Party in?", "rephrase":
            "Which series is Welcome Party part of?", "alt": "30 Rock", "answers": ["Frasier"],
            "loc": "nq question: who sang the theme song to the jeffersons", "loc_ans": "Ja'Net DuBois"},
           {"subject": "Lake Tana", "src": "Which country is Lake Tana in?", "rephrase":
            "In which country is Lake Tana?", "alt": "Kenya", "answers": ["Ethiopia"],
            "loc": "nq question: who wrote the song take me home country roads", "loc_ans": "John Denver"}]


def test_generation_scores_come_out_of_a_real_server(tmp_path: Path):
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(RECORDS))
    cmd = [sys.executable, "-m", "bench.says", "--smoke", "--data", f"zsre:{data}", "-n", "2", "--out",
           str(tmp_path), "--sequential"]
    run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    doc = json.loads((tmp_path / "says_zsre_scoped_seq2.json").read_text())
    res = doc["results"]
    assert doc["command"].startswith("python -m bench.says") and res["n"] == 2 and res["method"] == "scoped"
    for key in ("prompt", "rephrase", "chat", "chat_rephrase", "unchanged", "repeat", "repeat_unedited"):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["edit_ms_p50"] > 0


def test_a_long_sequential_run_can_check_a_spread_of_its_records(tmp_path: Path):
    assert spread(1000, 3) == [0, 500, 999] and spread(2, 5) == [0, 1] and spread(7, 1) == [0]
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(RECORDS))
    samples = tmp_path / "samples.json"
    cmd = [sys.executable, "-m", "bench.says", "--smoke", "--data", f"zsre:{data}", "-n", "3", "--sequential",
           "--check", "2", "--out", str(tmp_path), "--samples", str(samples)]
    run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    res = json.loads((tmp_path / "says_zsre_scoped_seq3_check2.json").read_text())["results"]
    assert res["n"] == 2 and res["edits"] == 3 and res["edit_ms_p50_first100"] > 0 and res["edit_ms_p50_last100"] > 0
    kept = json.loads(samples.read_text())
    assert [s["edit_prompt"] for s in kept] == [RECORDS[0]["src"], RECORDS[2]["src"]]
    assert all(s["edit_ms"] > 0 for s in kept)
    bad = [sys.executable, "-m", "bench.says", "--smoke", "--data", f"zsre:{data}", "-n", "3", "--check", "2",
           "--out", str(tmp_path)]
    bad = subprocess.run(bad, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert bad.returncode != 0 and "--check" in bad.stderr


def test_a_run_extended_with_skip_checks_only_the_later_records_and_keeps_their_samples(tmp_path: Path):
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(RECORDS))
    samples = tmp_path / "samples.json"
    cmd = [sys.executable, "-m", "bench.says", "--smoke", "--data", f"zsre:{data}", "-n", "2", "--skip", "1",
           "--out", str(tmp_path), "--samples", str(samples)]
    run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    res = json.loads((tmp_path / "says_zsre_scoped_single.json").read_text())["results"]
    assert res["n"] == 1 and res["skip"] == 1
    (sample,) = json.loads(samples.read_text())
    assert sample["edit_prompt"] == RECORDS[1]["src"] and sample["edit_ms"] > 0
    bad = [sys.executable, "-m", "bench.says", "--smoke", "--data", f"zsre:{data}", "-n", "2", "--skip", "2",
           "--out", str(tmp_path)]
    bad = subprocess.run(bad, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert bad.returncode != 0 and "--skip" in bad.stderr


def test_long_form_corrections_are_judged_on_the_whole_sentence(tmp_path: Path):
    from test_million import data_folder

    data = data_folder(tmp_path / "data") / "counterfact" / "dev.json"
    cmd = [sys.executable, "-m", "bench.says", "--smoke", "--data", f"longform:{data}", "-n", "2", "--out",
           str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    res = json.loads((tmp_path / "says_longform_scoped_single.json").read_text())["results"]
    assert res["n"] == 2
    for key in ("whole", "object", "chat_whole", "chat_object", "rephrase_object", "junk", "unchanged", "repeat"):
        assert 0.0 <= res[key] <= 1.0, key
