"""fluency.py: the text rules that generation-based scores stand on."""
from __future__ import annotations

from editor_core.data import EditRecord, EditRequest
from editor_core.fluency import fluency, mentions, ngram_entropy, repeats, reply_metrics, reply_reference, says


def test_says_is_a_start_on_word_boundaries():
    assert says(" Madrid, Spain.", "Madrid") and says("madrid", " Madrid") and says(" 30 Rock.", "30 Rock")
    assert not says(" Madridian food", "Madrid") and not says(" In Madrid", "Madrid") and not says("", "Madrid")
    assert not says(" anything", " ...")  # a target with no words is never said


def test_mentions_is_containment_on_word_boundaries():
    assert mentions("Federico was born in Madrid, Spain.", "Madrid")
    assert not mentions("Steelersersers", "Pittsburgh Steelers") and not mentions("Steelersers", "Steelers")


def test_repeats_flags_the_answer_over_and_over_and_any_loop():
    assert repeats(" Madrid Madrid Madrid", "Madrid")
    assert repeats("\n\nThe answer is:" * 4, "Rome")  # a 3-word loop, 4 times, has 4-grams 3 times
    assert not repeats(" the answer is 1. the answer is 2. the answer is 3.", "Rome")
    assert not repeats(" Madrid, Spain. He was born in Madrid in 1922.", "Madrid")


def test_entropy_is_low_for_loops_and_higher_for_varied_text():
    loop, varied = "dutch " * 30, "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat"
    assert ngram_entropy(loop) == 0.0 < ngram_entropy(varied)
    assert ngram_entropy("") == 0.0


def test_fluency_judges_the_reply_and_its_references_on_the_same_number_of_words():
    # The reference is one word shorter: its loop's third "the cat sat on" falls past its end. Judged on the same
    # words, the same text is the same text.
    loop = " the cat sat on" * 3
    out = fluency(loop + " the", {"long": "", "answer_in": loop[:-3]}, "dog")
    assert out["repeat"] == out["repeat_answer_in"] == 0.0 and out["entropy"] == out["entropy_answer_in"]
    assert fluency(loop + " x y z", {"long": "", "answer_in": loop + " the"}, "dog")["repeat"] == 1.0


def test_questions_about_the_edited_subject_are_judged_unchanged_or_not():
    rec = EditRecord(EditRequest("Frankie Albert plays as", " goaltender"), [],
                     [EditRequest("Troy Smith plays as", " x")],
                     "Frankie Albert", kind="counterfact",
                     extra={"other_questions": ["Frankie Albert was born in", "Frankie Albert is a citizen of"]})
    edited = {"Frankie Albert was born in": " goaltender", "Frankie Albert is a citizen of": " the United States"}

    def unedited(queries):
        return [" the United States" if p == "Frankie Albert is a citizen of" else f" [{p}]" for p, _, _ in queries]

    def after_edit(queries):
        return [edited.get(p, f" [{p}]") for p, _, _ in queries]

    ref = reply_reference(unedited, rec)
    assert ref["same_subject"] == [" [Frankie Albert was born in]", " the United States"]
    assert ref["unrelated"] == [" [Troy Smith plays as]"]
    row, _ = reply_metrics(after_edit, rec, ref)
    assert row["same_subject"] == 0.5 and row["unchanged"] == 1.0
    assert "same_subject" not in reply_metrics(after_edit, rec, {**ref, "same_subject": []})[0]
