"""bench/million.py on the tiny random model and a small data folder of its own (CI has no shared data): the fill
(real records first, then generated questions over distinct names), keys cached and reused, and the codebook
timed and measured at each point."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_says import RECORDS

ROOT = Path(__file__).resolve().parents[2]
PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov", "Donald Knuth"]
RELATIONS = [("P19", "{} was born in", "London", "Paris"), ("P27", "{} is a citizen of", "Norway", "Chile")]


def data_folder(tmp: Path) -> Path:
    """zsRE and CounterFact train/dev files of a few records each, in the shared data's formats."""
    cf = [{"case_id": i, "requested_rewrite": {"prompt": form, "relation_id": rel, "subject": who,
                                              "target_new": {"str": new}, "target_true": {"str": true}},
           "paraphrase_prompts": [f"Some say that {form.format(who)}"], "neighborhood_prompts": [form.format("Ann")]}
          for i, (who, (rel, form, new, true)) in enumerate((p, r) for p in PEOPLE for r in RELATIONS)]
    for kind, records in (("zsre", RECORDS), ("counterfact", cf)):
        (tmp / kind).mkdir(parents=True)
        for split in ("train", "dev"):
            (tmp / kind / f"{split}.json").write_text(json.dumps(records))
    return tmp


def test_the_fill_is_real_records_then_distinct_generated_questions(tmp_path: Path):
    from bench.million import fill, real_questions

    data = data_folder(tmp_path)
    real = real_questions(data)
    questions = fill(len(real) + 20, data=data)
    assert len(real) == len(RECORDS) + len(PEOPLE) and questions[: len(real)] == real
    assert len(set(q for q, _ in questions)) == len(questions)
    assert all("{}" not in q for q, _ in questions[len(real):])


def test_points_are_measured_and_keys_are_kept_for_the_next_run(tmp_path: Path):
    data = data_folder(tmp_path / "data")
    cmd = [sys.executable, "-m", "bench.million", "--smoke", "--points", "10,30", "--n-requests", "3",
           "--data", str(data), "--out", str(tmp_path)]
    for _ in range(2):  # the second run reads the keys the first computed
        run = subprocess.run(cmd, cwd=ROOT, timeout=600, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-4000:]
    assert "keys 0-30" not in run.stderr and len(list((tmp_path / "million").rglob("*.safetensors"))) == 1
    res = json.loads((tmp_path / "million_keys.json").read_text())["results"]
    assert [p["edits"] for p in res["points"]] == [10, 30]
    assert all(p["select_ms_p50"] > 0 and p["add_us_per_edit"] > 0 for p in res["points"])
