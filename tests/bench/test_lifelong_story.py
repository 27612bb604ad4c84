"""bench/lifelong_story.py on the tiny random model: a real `mend serve`, a story topped up from a second file,
cut short and resumed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.lifelong_story as story
from bench.lifelong_story import fill
from editor_core.data import load_records

from test_says import RECORDS

FILL = [{"subject": f"Town {i}", "src": f"Which river runs through Town {i}?", "rephrase":
         f"Through Town {i} runs which river?", "alt": f"River {i}", "answers": ["Thames"],
         "loc": f"nq question: who painted picture number {i}", "loc_ans": "Monet"} for i in range(12)]


class CutShort(Exception):
    pass


def run(data: Path, more: Path, out: Path, resume: bool) -> None:
    story.main(data=f"zsre:{data}", k=14, fill_from=f"zsre:{more}", recheck=2, library=None, force=False,
               method="scoped", canaries=3, says=1, resume=resume, smoke=True, model=None, editor=None, threads=1,
               out=out)


def test_fill_tops_up_with_other_subjects_first_then_other_questions(tmp_path: Path):
    data, more = tmp_path / "dev.json", tmp_path / "train.json"
    data.write_text(json.dumps(RECORDS))
    again = {**FILL[0], "src": "How long is the river of Town 0?"}
    other = {**RECORDS[0], "src": "Who was Federico Almerares' father?"}
    more.write_text(json.dumps([other, FILL[0], again, *FILL[1:3]]))
    recs = fill(load_records(f"zsre:{data}"), load_records(f"zsre:{more}"), 7)
    assert [r.edit.prompt for r in recs] == [r["src"] for r in RECORDS] + [FILL[i]["src"] for i in range(3)] + \
        [again["src"]]  # never a subject of the checked file; a filled subject's second question last


def test_a_story_cut_short_goes_on_where_its_log_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data, more = tmp_path / "dev.json", tmp_path / "train.json"
    data.write_text(json.dumps(RECORDS))
    more.write_text(json.dumps(FILL))
    saved = story.save

    def killed_after_first_point(p, name, doc, command):
        path = saved(p, name, doc, command)
        if not doc["complete"]:
            raise CutShort()
        return path

    monkeypatch.setattr(story, "save", killed_after_first_point)
    with pytest.raises(CutShort):
        run(data, more, tmp_path, resume=False)
    result = tmp_path / "lifelong_zsre_scoped_14.json"
    cut = json.loads(result.read_text())["results"]
    assert not cut["complete"] and [p["edits"] for p in cut["curve"]] == [10] and cut["done"] == list(range(10))
    monkeypatch.setattr(story, "save", saved)
    run(data, more, tmp_path, resume=True)
    res = json.loads(result.read_text())["results"]
    assert res["complete"] and [p["edits"] for p in res["curve"]] == [10, 14] and res["done"] == list(range(14))
    assert len(res["edit_ms"]) == 14 and res["curve"][1]["wall_s"] > res["curve"][0]["wall_s"]
    assert res["curve"][1]["rechecked"] == 2 and res["curve"][1]["resident_mb"] > 0 and res["k"] == 14
    assert res["canaries"]["prompts"] == 3 and res["refused"] == 0
    with pytest.raises(Exception, match="nothing to resume"):  # a whole story is not resumed
        run(data, more, tmp_path, resume=True)
