"""Edit data: the zsRE and CounterFact formats, the prompt/target seam, target-only labels."""
from __future__ import annotations

import json

import pytest
import torch

from editor_core.data import EditRequest, join, load_records, target_nll, tokenize_edits


def test_load_zsre(data_files):
    recs = load_records(f"zsre:{data_files['zsre']}")
    assert [r.edit for r in recs] == [EditRequest("What country is Paris in?", "Italy"),
                                      EditRequest("Which continent is the Nile on?", "Asia"),
                                      EditRequest("What colour is Mars?", "blue")]  # the empty `alt` is skipped
    first = recs[0]
    assert first.rephrases == ["Paris is in which country?"] and first.subject == "Paris"
    assert first.loc == [EditRequest("nq question: who wrote hamlet", "Shakespeare")]
    assert first.kind == "zsre" and first.true_target is None
    assert first.extra == {"answer": "France", "other_questions": []}  # the file asks Paris nothing else


def test_load_counterfact(data_files):
    recs = load_records(f"counterfact:{data_files['counterfact']}")
    first = recs[0]
    assert first.edit == EditRequest("LinkedIn, which is owned by", " Apple")  # prompt.format(subject), " " + new
    assert first.true_target == " Microsoft" and first.subject == "LinkedIn" and first.kind == "counterfact"
    assert first.rephrases == ["LinkedIn is a company. LinkedIn is owned by"]
    assert first.loc == [EditRequest("Skype is owned by", " Microsoft"),
                         EditRequest("GitHub is owned by", " Microsoft")]
    assert recs[1].extra == {"case_id": 2, "relation_id": "P103",
                             "other_questions": ["Danielle Darrieux, which is owned by"]}
    # the same subject asked another relation of the file (here there is one other): an edit must leave it alone
    assert first.extra["other_questions"] == ["The mother tongue of LinkedIn is"]
    assert load_records(f"counterfact:{data_files['counterfact']}", n=1)[0].extra == first.extra  # n cuts after


def test_zsre_other_questions_are_the_subjects_questions_with_other_answers(tmp_path):
    rows = [{"subject": "a", "src": "Where is a?", "alt": "X", "answers": ["here"], "rephrase": "a is where?"},
            {"subject": "a", "src": "a is where?", "alt": "Y", "answers": ["there"], "rephrase": "Where's a?"},
            {"subject": "a", "src": "Where's a located?", "alt": "Y", "answers": ["here"], "rephrase": "?"},
            {"subject": "a", "src": "Who made a?", "alt": "Z", "answers": ["Bob"], "rephrase": "a's maker?"},
            {"subject": "a", "src": "Who made a?", "alt": "W", "answers": ["Bo"], "rephrase": "a's maker?"},
            {"subject": "b", "src": "Who made b?", "alt": "V", "answers": ["Al"], "rephrase": "b's maker?"}]
    path = tmp_path / "z.json"
    path.write_text(json.dumps(rows))
    first, b = load_records(f"zsre:{path}", one_per_subject=True)
    # not its own rephrase, not a question with its answer, each once
    assert first.extra["other_questions"] == ["Who made a?"] and b.extra["other_questions"] == []


def test_format_detected_from_keys_and_n_limits(data_files):
    assert [r.kind for r in load_records(str(data_files["counterfact"]))] == ["counterfact"] * 2
    assert [r.kind for r in load_records(str(data_files["zsre"]), n=2)] == ["zsre"] * 2


def test_one_per_subject_keeps_the_first(tmp_path):
    rows = [{"subject": s, "src": f"Q{i}?", "alt": f"A{i}", "answers": ["x"], "rephrase": "R?"}
            for i, s in enumerate(["a", "b", "a", "c"])]
    path = tmp_path / "z.json"
    path.write_text(json.dumps(rows))
    assert [r.edit.prompt for r in load_records(f"zsre:{path}", one_per_subject=True)] == ["Q0?", "Q1?", "Q3?"]
    assert len(load_records(f"zsre:{path}")) == 4


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(ValueError, match="non-empty JSON list"):
        load_records(str(tmp_path / "e.json"))


@pytest.mark.parametrize("prompt, target, expected", [
    ("The capital is", "Paris", ("The capital is", " Paris")),
    ("The capital is", " Paris", ("The capital is", " Paris")),
    ("The capital is ", "Paris", ("The capital is ", "Paris")),
    ("Q:\n", "Paris", ("Q:\n", "Paris")),
    ("", "Paris", ("", "Paris")),
])
def test_join_puts_one_space_at_the_seam(prompt, target, expected):
    assert join(prompt, target) == expected


def test_labels_only_on_target_tokens(tokenizer):
    reqs = [EditRequest("The capital of France is", "Rome"), EditRequest("Who wrote Dracula?", "Bram Stoker")]
    b = tokenize_edits(tokenizer, reqs)
    for i, req in enumerate(reqs):
        prompt, target = join(req.prompt, req.target)
        n_prompt = len(tokenizer(prompt)["input_ids"])
        n_target = len(tokenizer(target, add_special_tokens=False)["input_ids"])
        labelled = (b["labels"][i] != -100).nonzero().flatten().tolist()
        assert labelled == list(range(n_prompt, n_prompt + n_target))
        assert tokenizer.decode(b["labels"][i][labelled]) == target
        assert torch.equal(b["labels"][i][labelled], b["input_ids"][i][labelled])
        assert b["attention_mask"][i].sum() == n_prompt + n_target  # right padding after the real tokens
        assert b["attention_mask"][i][: n_prompt + n_target].all()


def test_long_prompt_keeps_its_end_and_the_whole_target(tokenizer):
    req = EditRequest("word " * 100 + "The capital of France is", "Rome")
    b = tokenize_edits(tokenizer, [req], max_length=16)
    assert b["input_ids"].shape[1] == 16
    assert tokenizer.decode(b["input_ids"][0]).endswith("The capital of France is Rome")
    assert tokenizer.decode(b["labels"][0][b["labels"][0] != -100]) == " Rome"


def test_target_without_tokens_is_refused(tokenizer):
    with pytest.raises(ValueError, match="no tokens"):
        tokenize_edits(tokenizer, [EditRequest("Prompt", "")])


def test_target_nll_is_a_per_sequence_mean_over_target_tokens():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 3, 6]])
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([-(logp[0, 1, 3] + logp[0, 2, 4]) / 2,
                            -(logp[1, 0, 1] + logp[1, 1, 2] + logp[1, 2, 3] + logp[1, 3, 6]) / 4])
    answer = logits[:, :-1][labels[:, 1:] != -100]  # what answer_logits returns: answer positions, row-major
    torch.testing.assert_close(target_nll(answer, labels), expected)
