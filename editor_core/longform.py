"""Corrections as people write them (issue 32): a question answered by a whole sentence that states the new fact,
some with a second clause, built from CounterFact records: `load_records("longform:FILE")` of a CounterFact file.

Each record becomes a question about its subject and relation ("Where did Danielle Darrieux die?"), a second
wording of it (the rephrase), and the sentence target ("Danielle Darrieux died in the city of Rome, not Paris.").
The object alone (`extra["object"]`) is what "states the new object" looks for. Neighbours are CounterFact's, with
their true answers: other subjects asked the same relation, whose replies must not change.
"""
from __future__ import annotations

import random

from .data import EditRecord, EditRequest

# relation -> (question, another wording of it, the statement): {s} the subject, {o} the object.
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "P17": ("Which country is {s} located in?", "In which country can {s} be found?",
            "{s} is located in the country of {o}"),
    "P19": ("Where is {s} originally from?", "What place does {s} come from?", "{s} is originally from {o}"),
    "P20": ("Where did {s} die?", "In which city did {s} pass away?", "{s} died in the city of {o}"),
    "P27": ("What is the country of citizenship of {s}?", "Which country is {s} a citizen of?",
            "{s} is a citizen of {o}"),
    "P30": ("Which continent is {s} on?", "On which continent can {s} be found?",
            "{s} is located on the continent of {o}"),
    "P36": ("What is the capital of {s}?", "Which city is the capital of {s}?", "The capital of {s} is {o}"),
    "P37": ("What is the official language of {s}?", "Which language is official in {s}?",
            "The official language of {s} is {o}"),
    "P39": ("What position does {s} hold?", "Which office does {s} hold?", "{s} holds the position of {o}"),
    "P101": ("What field does {s} work in?", "What is the area of work of {s}?", "{s} works in the field of {o}"),
    "P103": ("What is the native language of {s}?", "Which language is the mother tongue of {s}?",
             "The native language of {s} is {o}"),
    "P106": ("What is the profession of {s}?", "What does {s} do for a living?", "The profession of {s} is {o}"),
    "P108": ("Who is {s} employed by?", "Which company does {s} work for?", "{s} is employed by {o}"),
    "P127": ("Who owns {s}?", "Which company owns {s}?", "{s} is owned by {o}"),
    "P131": ("Where is {s} located?", "In which region can {s} be found?", "{s} is located in {o}"),
    "P136": ("What kind of music does {s} play?", "Which genre is {s} known for?", "{s} is known for playing {o}"),
    "P138": ("What is {s} named after?", "Who or what was {s} named after?", "{s} was named after {o}"),
    "P140": ("What religion does {s} follow?", "Which religion is {s} affiliated with?",
             "{s} follows the religion of {o}"),
    "P159": ("Where are the headquarters of {s}?", "In which city is {s} headquartered?",
             "The headquarters of {s} are in {o}"),
    "P176": ("Which company produces {s}?", "Who manufactures {s}?", "{s} is produced by {o}"),
    "P178": ("Who developed {s}?", "Which company created {s}?", "{s} was developed by {o}"),
    "P190": ("What is the twin city of {s}?", "Which city is twinned with {s}?", "The twin city of {s} is {o}"),
    "P264": ("Which record label represents {s}?", "What is the record company of {s}?",
             "{s} is represented by the record label {o}"),
    "P276": ("Where is {s}?", "What is the location of {s}?", "{s} is located in {o}"),
    "P364": ("What is the original language of {s}?", "In which language was {s} first made?",
             "The original language of {s} is {o}"),
    "P407": ("In which language is {s} written?", "What is the language of {s}?", "{s} is written in {o}"),
    "P413": ("What position does {s} play?", "Which position does {s} play in?", "{s} plays in the position of {o}"),
    "P449": ("On which network did {s} originally air?", "Which channel first broadcast {s}?",
             "{s} originally aired on {o}"),
    "P463": ("Which organization is {s} a member of?", "What is {s} affiliated with?", "{s} is a member of {o}"),
    "P495": ("In which country was {s} created?", "Where does {s} come from?", "{s} was created in {o}"),
    "P641": ("Which sport does {s} play?", "What sport is {s} associated with?", "{s} plays {o} professionally"),
    "P740": ("Where was {s} formed?", "In which place was {s} founded?", "{s} was formed in {o}"),
    "P937": ("In which city did {s} work?", "Where did {s} work?", "{s} worked in the city of {o}"),
    "P1303": ("Which instrument does {s} play?", "What instrument is {s} known for playing?", "{s} plays the {o}"),
    "P1412": ("Which language does {s} speak?", "What language is used by {s}?", "{s} speaks and writes {o}"),
}
# How a sentence ends: most end after the fact; some go on, as people write corrections.
ENDINGS = (".", ".", ", not {t}.", ", according to the latest records.", ", and several sources now confirm it.")
WORDS = (8, 25)  # a target sentence's length in words


def longform(rec: dict) -> EditRecord | None:
    """A CounterFact record as a long-form correction, or None (no template for its relation, or a sentence
    outside WORDS)."""
    rw = rec["requested_rewrite"]
    if rw.get("relation_id") not in TEMPLATES:
        return None
    question, rephrase, statement = TEMPLATES[rw["relation_id"]]
    subject, new, true = rw["subject"], rw["target_new"]["str"], rw["target_true"]["str"]
    ending = random.Random(rec.get("case_id")).choice(ENDINGS).format(t=true)
    sentence = statement.format(s=subject, o=new) + ending
    sentence = sentence[0].upper() + sentence[1:]
    if not WORDS[0] <= len(sentence.split()) <= WORDS[1]:
        return None
    loc = [EditRequest(p, " " + true) for p in rec.get("neighborhood_prompts", [])]
    return EditRecord(EditRequest(question.format(s=subject), " " + sentence), [rephrase.format(s=subject)], loc,
                      subject, true_target=None, kind="longform",
                      extra={"object": new, "case_id": rec.get("case_id"), "relation_id": rw["relation_id"]})
