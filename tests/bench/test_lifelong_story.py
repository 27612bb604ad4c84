"""bench/lifelong_story.py on the tiny random model: a real `mend serve`, a story topped up from a second file,
cut short and resumed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_says import RECORDS

import bench.lifelong_story as story
from bench.common import make_profile, serving
from bench.lifelong_story import fill
from editor_core.data import load_records
from service.client import MendClient

FILL = [{"subject": f"Town {i}", "src": f"Which river runs through Town {i}?", "rephrase":
         f"Through Town {i} runs which river?", "alt": f"River {i}", "answers": ["Thames"],
         "loc": f"nq question: who painted picture number {i}", "loc_ans": "Monet"} for i in range(12)]


class CutShort(Exception):
    pass


def run(data: Path, more: Path, out: Path, resume: bool, end_n: int | None = None) -> None:
    story.main(data=f"zsre:{data}", k=14, fill_from=f"zsre:{more}", recheck_n=2, library=None, force=False,
               method="scoped", canaries=3, says=1, end_n=end_n, resume=resume, smoke=True, model=None, editor=None,
               threads=1, out=out)


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
    """Cut after its first point; meanwhile its log took records 10 and 12 (a kill lands between a logged edit and
    the next result written; 11 stands for an edit the guard refused). The resumed story goes on after 12."""
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
    records = fill(load_records(f"zsre:{data}"), load_records(f"zsre:{more}"), 14)
    p = make_profile(True, None, None, 1, tmp_path)
    work = tmp_path / "lifelong" / "lifelong_zsre_scoped_14"
    with serving(p, work / "data", tmp_path / "between.log", MEND_METHOD="scoped") as s, MendClient(s.url) as mend:
        for i in (10, 12):
            mend.edit(records[i].edit.prompt, records[i].edit.target, author=story.AUTHOR)
    monkeypatch.setattr(story, "save", saved)
    run(data, more, tmp_path, resume=True)
    res = json.loads(result.read_text())["results"]
    assert res["complete"] and [p["edits"] for p in res["curve"]] == [10, 13] and res["curve"][0] == cut["curve"][0]
    assert res["done"] == [*range(11), 12, 13] and res["refused"] == 1 and res["resumed_at"] == [12]
    assert len(res["edit_ms"]) == 11 and res["curve"][1]["wall_s"] > res["curve"][0]["wall_s"]
    assert res["curve"][1]["rechecked"] == 2 and res["curve"][1]["resident_mb"] > 0 and res["k"] == 14
    assert res["canaries"]["prompts"] == 3
    with pytest.raises(Exception, match="nothing to resume"):  # a whole story is not resumed
        run(data, more, tmp_path, resume=True)


def test_says_end_checks_a_complete_story_by_generation_under_all_its_edits(tmp_path: Path):
    """--says-end on a complete story: the rechecked edits, spread over the edit order, checked by /generate on a
    server that replayed the whole log; the curve is kept, and a log that is not the story's is refused."""
    data, more = tmp_path / "dev.json", tmp_path / "train.json"
    data.write_text(json.dumps(RECORDS))
    more.write_text(json.dumps(FILL))
    run(data, more, tmp_path, resume=False)
    result = tmp_path / "lifelong_zsre_scoped_14.json"
    whole = json.loads(result.read_text())
    assert "says_end" not in whole["results"]
    run(data, more, tmp_path, resume=True, end_n=2)
    doc = json.loads(result.read_text())
    end = doc["results"].pop("says_end")
    assert doc["results"] == whole["results"] and doc["command"].startswith(whole["command"] + " ; ")
    assert end["n"] == 2 and end["of"] == 2 and end["edits"] == 14
    assert {"prompt", "rephrase", "chat", "chat_rephrase", "unchanged", "repeat", "repeat_unedited"} <= end.keys()
    samples = json.loads((tmp_path / "lifelong_zsre_scoped_14_says_end_samples.json").read_text())
    assert [s["record"] for s in samples] == [0, 1] and samples[0]["edit_prompt"] == RECORDS[0]["src"]

    p = make_profile(True, None, None, 1, tmp_path)
    work = tmp_path / "lifelong" / "lifelong_zsre_scoped_14"
    with serving(p, work / "data", tmp_path / "after.log", MEND_METHOD="scoped") as s, MendClient(s.url) as mend:
        mend.rollback(mend.list_edits(status="active", limit=1, author=story.AUTHOR).data[0].edit_id)
    with pytest.raises(ValueError, match="exactly"):
        run(data, more, tmp_path, resume=True, end_n=2)
