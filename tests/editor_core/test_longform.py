"""The long-form set (editor_core/longform.py) and the junk a reply to it can hold (fluency.junk)."""
from __future__ import annotations

import json
from pathlib import Path

from editor_core.data import load_records
from editor_core.fluency import after_answer, junk, mentions

RECORD = {"case_id": 7, "requested_rewrite": {"prompt": "{} died in the city of", "relation_id": "P20",
                                              "subject": "Danielle Darrieux", "target_new": {"str": "Rome"},
                                              "target_true": {"str": "Paris"}},
          "paraphrase_prompts": ["x"], "neighborhood_prompts": ["Jean Gabin died in the city of"]}


def test_a_counterfact_record_becomes_a_question_answered_by_a_sentence(tmp_path: Path):
    path = tmp_path / "cf.json"
    odd = {**RECORD, "requested_rewrite": {**RECORD["requested_rewrite"], "relation_id": "P9999"}}
    path.write_text(json.dumps([RECORD, odd]))
    (rec,) = load_records(f"longform:{path}")
    assert rec.edit.prompt == "Where did Danielle Darrieux die?" and rec.kind == "longform"
    assert rec.edit.target.startswith(" Danielle Darrieux died in the city of Rome") and rec.edit.target.endswith(".")
    assert 8 <= len(rec.edit.target.split()) <= 25 and rec.extra["object"] == "Rome"
    assert rec.rephrases == ["In which city did Danielle Darrieux pass away?"]
    assert [(q.prompt, q.target) for q in rec.loc] == [("Jean Gabin died in the city of", " Paris")]


def test_junk_names_what_a_user_would_call_broken():
    target = " Argentina won the 2022 FIFA World Cup, beating France on penalties."
    assert junk(" Argentina won the 2022 FIFA World Cup, beating France on penalties. Messi scored.", target) == []
    assert junk(" Argentina won the 2|•.\n\nThe answer is: 1.", target) == ["symbols", "cut"]
    assert junk(" Saturn has the most known known moons.", " Saturn has the most known moons.") == ["doubled", "cut"]
    assert junk(" The capital of Indonesia is Jakarta.", target) == []  # wrong, not broken: `object` says so
    assert mentions(" argentina WON the 2022 fifa world cup beating france on penalties!", target)
    assert after_answer(" Argentina won the 2022 FIFA World Cup, beating France on penalties. So it was.",
                        target) == "so it was"


def test_mend_eval_generate_judges_a_long_form_record_by_its_sentence(tmp_path: Path):
    from editor_core.evaluate import _reference, _says

    path = tmp_path / "cf.json"
    path.write_text(json.dumps([RECORD]))
    (rec,) = load_records(f"longform:{path}")

    def gen(queries):  # every reply states the sentence, the neighbour's stays as it was
        return [rec.edit.target if q[0] != rec.loc[0].prompt else " Paris." for q in queries]

    said = _says(gen, rec, _reference(gen, rec))
    assert said["says_whole"] == said["says_chat_whole"] == said["says_object"] == 1.0
    assert said["says_junk"] == 0.0 and said["says_unchanged"] == 1.0
