"""The forms a request comes in: a bare prompt, or a question inside the model's chat template. A scoped edit is
computed in every form, so a fact edited once shows in plain and chat requests alike."""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..data import EditRequest
from ..generation import chat_text

PLAIN, CHAT = "plain", "chat"  # the forms a request comes in: a bare prompt, or a question in the chat template


def forms_of(tok: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """The forms a request to this model can come in."""
    return (PLAIN, CHAT) if tok.chat_template else (PLAIN,)


def in_forms(tok: PreTrainedTokenizerBase, requests: list[EditRequest]) -> list[EditRequest]:
    """Each edit in every form a request can ask it in (`forms_of`): the plain prompt, and the same question as
    the user's message in the chat template, the target being the assistant's reply: a delta computed on the
    plain prompt alone rarely carries over to the chat template."""
    out, chat_too = [], CHAT in forms_of(tok)
    for r in requests:
        out.append(r)
        if chat_too:
            out.append(EditRequest(chat_text(tok, [{"role": "user", "content": r.prompt}]), r.target.strip()))
    return out
