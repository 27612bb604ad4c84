"""fluency.py: the text rules that generation-based scores stand on."""
from __future__ import annotations

from editor_core.fluency import fluency, mentions, ngram_entropy, repeats, says


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
