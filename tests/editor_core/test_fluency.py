"""fluency.py: the text rules that generation-based scores stand on."""
from __future__ import annotations

from editor_core.fluency import mentions, ngram_entropy, repeats, says


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
