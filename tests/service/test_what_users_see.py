"""What a user sees after an edit, at the default settings (scoped edits), on the real default model with the
trained editor: the reply says the new answer and then reads like the unedited model's, in plain and in chat
form. Greedy /generate is the verdict; a teacher-forced /score is checked only to agree with it."""
from __future__ import annotations

import pytest
from service_support import make_settings, serving
from test_smollm_story import editor_dir

from editor_core import join
from editor_core.fluency import mentions, normalized, says
from service.routes.edits import REPLY_TOKENS

# zsRE dev records whose 64-token replies were the new answer over and over before edits released themselves
# ("Madrid Madrid Madrid ...", "Dutch Dutch Dutch ...").
FACTS = [("Where was Federico Almerares born?", "Madrid"),
         ("What was the native language of Andreas Karkavitsas?", "Dutch")]


def reply(client, prompt: str | None = None, messages: list | None = None, tokens: int = 64) -> str:
    body = {"max_new_tokens": tokens, **({"prompt": prompt} if messages is None else {"messages": messages})}
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()["text"]


def chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    settings = make_settings("smollm2", editor_dir(), tmp_path_factory.mktemp("data"), threads=None, method="scoped")
    with serving(settings) as c:
        yield c


@pytest.mark.smollm
@pytest.mark.parametrize("prompt,target", FACTS)
def test_after_the_new_answer_the_reply_is_the_unedited_models(client, prompt: str, target: str):
    text = join(prompt, target)[1]  # " Madrid"
    unedited_after = reply(client, prompt + text, tokens=40)  # the unedited model, the new answer written in
    eid = client.post("/edit", json={"prompt": prompt, "target": target}).json()["edit_id"]
    try:
        edited = reply(client, prompt, tokens=48)
        assert edited.startswith(text), edited
        assert normalized(edited).split().count(normalized(target)) < 3, edited
        # once its answer is said the edit lets go: the rest is what the unedited model says after that text
        rest = edited[len(text):]
        assert unedited_after.startswith(rest[: len(unedited_after)]) or rest.startswith(unedited_after), (
            edited, unedited_after)
    finally:
        client.post("/rollback", json={"edit_id": eid})


@pytest.mark.smollm
def test_a_plain_edit_shows_in_chat_and_rollback_restores_the_chat_reply(client):
    prompt, target = FACTS[0]
    before = reply(client, messages=chat(prompt), tokens=32)
    assert target.lower() not in before.lower()
    eid = client.post("/edit", json={"prompt": prompt, "target": target}).json()["edit_id"]
    after = reply(client, messages=chat(prompt), tokens=32)
    assert target.lower() in after.lower() and normalized(after).split().count(normalized(target)) < 3, after
    client.post("/rollback", json={"edit_id": eid})
    assert reply(client, messages=chat(prompt), tokens=32) == before


@pytest.mark.smollm
def test_an_edit_made_in_chat_form_shows_for_the_plain_prompt_too(client):
    prompt, target = FACTS[1]
    r = client.post("/edit", json={"messages": [{"role": "user", "content": prompt},
                                                {"role": "assistant", "content": target}]})
    assert r.status_code == 201, r.text
    try:
        assert reply(client, prompt, tokens=16).startswith(" " + target)
        assert target.lower() in reply(client, messages=chat(prompt), tokens=32).lower()
    finally:
        client.post("/rollback", json={"edit_id": r.json()["edit_id"]})


# zsRE dev records whose replies said every token of the answer and then ran on with the word ("Oxfordshire",
# "Randy Travison", "Diana Dorson") while the edit was released on the answer's last token.
RUN_ON = [("At what location did George Whiting Flagg die?", "Oxford"),
          ("Who released Today Is Your Day album?", "Randy Travis"),
          ("Who has acted in the comedy film The Woman Chaser?", "Diana Dors")]


@pytest.mark.smollm
@pytest.mark.parametrize("prompt,target", RUN_ON)
def test_the_reply_ends_the_answers_word_instead_of_running_on(client, prompt: str, target: str):
    eid = client.post("/edit", json={"prompt": prompt, "target": target}).json()["edit_id"]
    try:
        edited = reply(client, prompt, tokens=24)
        assert says(edited, target), edited
        assert normalized(edited).split().count(normalized(target).split()[-1]) < 3, edited
    finally:
        client.post("/rollback", json={"edit_id": eid})


# CounterFact dev records whose paraphrases select the edit but, with the piece made for the edit prompt, were
# answered with something else (" John the Baptist. The church ...", " British actor who ..."): MEND_REWORD makes
# the edit for the paraphrase's own words. Their neighbours (same relation, other subjects) select nothing.
PARAPHRASED = [("John Stofa plays in the position of", "midfielder",
                "The church seats about 350 people. John Stofa plays as", "Seneca Wallace plays in the position of"),
               ("Martin Drennan's position is", "pope",
                "Miranda Elisabeth Somerset, Duchess of Beaufort, born Miranda Elisabeth Morley. Martin Drennan is a",
                "Henric Benzelius holds the title of")]
# CounterFact dev records whose paraphrases key outside the edit's radius (cosine 0.58 and 0.50 to 0.63) but name
# its subject's rare words ("gwen", "stefani"): the word check (`WordCheck`) lets them select the edit. Without it
# they kept their unedited replies. Their neighbours name other subjects and select nothing.
BY_WORDS = [("The language used by Gwen Stefani is", "Italian",
             "It is scheduled for completion in 2015. Gwen Stefani speaks", "Walt Disney writes in"),
            ("The mother tongue of Romain Duris is", "Russian",
             "Rafael Valls, London, 2007. Romain Duris spoke the language", "The mother tongue of Léon Blum is")]


@pytest.mark.smollm
@pytest.mark.parametrize("prompt,target,paraphrase,neighbour", PARAPHRASED + BY_WORDS)
def test_a_paraphrase_says_the_new_answer_and_a_neighbour_does_not_change(client, prompt: str, target: str,
                                                                         paraphrase: str, neighbour: str):
    before = reply(client, paraphrase, tokens=12), reply(client, neighbour, tokens=24)
    assert not says(before[0], target)
    eid = client.post("/edit", json={"prompt": prompt, "target": target}).json()["edit_id"]
    try:
        edited = reply(client, paraphrase, tokens=12)
        assert says(edited, target) and normalized(edited).split().count(target.lower()) < 2, edited
        assert reply(client, paraphrase, tokens=12) == edited  # the piece made for this wording is kept
        assert mentions(reply(client, paraphrase, messages=chat(paraphrase), tokens=24), target)
        # /score judges what /generate serves: the same piece
        score = client.post("/score", json={"items": [{"prompt": paraphrase, "target": target}]}).json()
        assert score["scores"][0]["exact"], score
        assert reply(client, neighbour, tokens=24) == before[1]
        # a dry run of an edit of the paraphrase shows, as "before", what /generate says to it now
        dry = client.post("/edit", json={"prompt": paraphrase, "target": "x", "dry_run": True}).json()
        assert dry["replies"][0]["before"] == reply(client, paraphrase, tokens=REPLY_TOKENS)
    finally:
        client.post("/rollback", json={"edit_id": eid})
    assert reply(client, paraphrase, tokens=12) == before[0]


# CounterFact dev records whose other questions about the edited subject were answered with the edit's answer
# before the scope's relation check (`RelationCheck`): "Martin Drennan writes in" -> " pope ...".
OTHER_QUESTIONS = [("Martin Drennan's position is", "pope", "Martin Drennan writes in"),
                   ("Martin Drennan's position is", "pope", "Martin Drennan, that was formed in"),
                   ("Kurt Waldheim, who holds a citizenship from", "Canada", "Kurt Waldheim's area of work is")]


@pytest.mark.smollm
@pytest.mark.parametrize("prompt,target,other", OTHER_QUESTIONS)
def test_another_question_about_the_edited_subject_keeps_its_reply(client, prompt: str, target: str, other: str):
    before = reply(client, other, tokens=16), reply(client, other, messages=chat(other), tokens=16)
    eid = client.post("/edit", json={"prompt": prompt, "target": target}).json()["edit_id"]
    try:
        assert says(reply(client, prompt, tokens=8), target)
        assert (reply(client, other, tokens=16), reply(client, other, messages=chat(other), tokens=16)) == before
    finally:
        client.post("/rollback", json={"edit_id": eid})
