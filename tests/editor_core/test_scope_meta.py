"""ScopedMeta: the one place a scoped delta's meta is read and written; logs written before a field existed replay
as they were served."""
import json

from editor_core.scope import PLAIN, ScopedMeta


def test_written_is_read_back_and_keeps_the_logged_text():
    meta = ScopedMeta(scope_scale=(2.0, 4.0), prompts=("Q1", "Q2"), targets=("A", "B"),
                      key_ranks={"m.w": [3, 2, 4, 1]}, forms=("plain", "chat"), radii=(0.7, 0.81),
                      word_end=(True, False))
    written = meta.written()
    # The exact text the log has always held (json.dumps of lists; word ends as 0/1), field by field, in order.
    assert written == {"scope_scale": "[2.0, 4.0]", "prompts": '["Q1", "Q2"]', "targets": '["A", "B"]',
                       "key_ranks": '{"m.w": [3, 2, 4, 1]}', "forms": '["plain", "chat"]', "radii": "[0.7, 0.81]",
                       "word_end": "[1, 0]"}
    assert list(written) == ["scope_scale", "prompts", "targets", "key_ranks", "forms", "radii", "word_end"]
    assert ScopedMeta.read({**written, "rank": "7"}) == meta  # other entries are not its business


def test_fields_missing_from_old_logs_read_as_what_those_edits_were_served_with():
    old = ScopedMeta.read({})
    assert old.written() == {} and old.form_names() == (PLAIN,)
    assert old.row_targets(2) == (None, None) and old.row_prompts(2) is None
    assert old.row_radii(2) == [float("-inf")] * 2 and old.row_word_end(2) == (False, False)
    every = ScopedMeta.read({"word_end": "1"})  # logs that extended every target wrote "1"
    assert every.row_word_end(3) == (True,) * 3 and every.written() == {"word_end": "1"}
    # A list of the wrong length (a hand-scoped delta) is as if absent.
    odd = ScopedMeta.read({"targets": json.dumps(["A"]), "radii": "[0.9]", "word_end": "[1]"})
    assert odd.row_targets(2) == (None, None) and odd.row_radii(2) == [float("-inf")] * 2
    assert odd.row_word_end(2) == (False, False)
