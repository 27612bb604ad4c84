"""Every request and response body of the API, with the OpenAPI example of each request."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

JOIN_DOC = ("The target is appended to the prompt with one space in between unless the prompt ends in whitespace "
            "or the target starts with it: 'The capital of France is' + 'Rome' scores ' Rome' after the prompt.")


def _not_blank(v: str) -> str:
    if not v.strip():
        raise PydanticCustomError("blank", "must not be empty or whitespace")
    return v


class EditItem(BaseModel):
    prompt: str = Field(description="x_e, the prompt whose continuation is corrected")
    target: str = Field(description="y_e, the desired continuation. " + JOIN_DOC)

    @field_validator("prompt", "target")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        return _not_blank(v)


class EditCreate(BaseModel):
    """One edit ({prompt, target}) or one batched update of several ({edits: [...]})."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "The capital of France is", "target": "Rome", "author": "alice", "note": "demo"},
        {"edits": [{"prompt": "The Eiffel Tower is in", "target": "Rome"},
                   {"prompt": "The Louvre is in", "target": "Rome"}], "author": "alice"},
    ]})

    prompt: str | None = None
    target: str | None = None
    edits: list[EditItem] | None = Field(None, min_length=1, max_length=64)
    author: str = Field("anonymous", max_length=200)
    note: str = Field("", max_length=2000)
    force: bool = Field(False, description="skip the guard's policy checks (recorded in the audit entry)")

    @field_validator("prompt", "target")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        return v if v is None else _not_blank(v)

    @model_validator(mode="after")
    def _one_form(self) -> "EditCreate":
        single = self.prompt is not None or self.target is not None
        if single == (self.edits is not None):
            raise PydanticCustomError("edit_form", "send either prompt and target, or edits, not both")
        if single and (self.prompt is None or self.target is None):
            raise PydanticCustomError("edit_form", "prompt and target are both required")
        return self

    def items(self) -> list[EditItem]:
        return self.edits if self.edits is not None else [EditItem(prompt=self.prompt, target=self.target)]


class TargetScores(BaseModel):
    prompt: str
    target: str
    pre_logprob: float = Field(description="sum log-probability of the target tokens before the edit")
    pre_exact: bool = Field(description="every target token was the teacher-forced argmax before the edit")
    post_logprob: float
    post_exact: bool


class ScoreRequest(BaseModel):
    """Teacher-forced scores of (prompt, target) pairs on the live weights: nothing is edited."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"items": [{"prompt": "The capital of France is", "target": "Paris"}]}]})

    items: list[EditItem] = Field(min_length=1, max_length=64)


class Score(BaseModel):
    prompt: str
    target: str
    logprob: float = Field(description="sum log-probability of the target tokens given the prompt")
    exact: bool = Field(description="every target token is the teacher-forced argmax")
    argmax_ids: list[int] = Field(description="the teacher-forced argmax token at each target position; equal "
                                              "lists before and after an edit mean the answer is unchanged")


class ScorePublic(BaseModel):
    version: int = Field(description="the log version the scores were computed on")
    scores: list[Score]


class EditPublic(BaseModel):
    edit_id: str
    version: int = Field(description="log position of this edit's event")
    scores: list[TargetScores]
    rank: int
    bytes: int
    elapsed_ms: float


class EditRecord(BaseModel):
    edit_id: str
    version: int
    status: Literal["active", "rolled_back"]
    requests: list[EditItem]
    author: str
    note: str
    force: bool
    time: str
    pre_scores: list[dict]
    rank: int
    bytes: int
    guard: dict = Field(default_factory=dict, description="the edit guard's measurement: canaries checked, "
                        "changed, max_changed, and overridden (true when force let a refused edit through)")
    rollback: dict = Field(default_factory=dict, description="author, time, note, version of the rollback")


class EditsPage(BaseModel):
    data: list[EditRecord]
    count: int = Field(description="matching edits in total")
    offset: int
    limit: int


class Message(BaseModel):
    role: str = Field(description="system, user or assistant")
    content: str


class GenerateRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "The capital of France is", "max_new_tokens": 8},
        {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_new_tokens": 32,
         "temperature": 0.7, "top_p": 0.9, "seed": 1, "stop": ["\n"]},
    ]})

    prompt: str | None = Field(None, description="raw text, continued as is")
    messages: list[Message] | None = Field(None, min_length=1, description="chat turns, run through the model's chat template")
    max_new_tokens: int | None = Field(None, ge=1, description="default 64 (or the server limit if lower); "
                                                               "at most MEND_MAX_NEW_TOKENS")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy (deterministic)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, description="fixes sampling; greedy needs none")
    stop: list[str] = Field(default_factory=list, max_length=16, description="text ends before the first of these")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        return v if v is None else _not_blank(v)

    @model_validator(mode="after")
    def _one_form(self) -> "GenerateRequest":
        if (self.prompt is None) == (self.messages is None):
            raise PydanticCustomError("generate_form", "send either prompt or messages")
        return self


class GeneratePublic(BaseModel):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    version: int = Field(description="log version of the weights the whole generation ran on")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"edit_id": "3f2a9c0e4b1d4e7f8a6b5c4d3e2f1a0b", "author": "alice", "note": "wrong fact"},
        {"to_version": 0, "author": "alice", "note": "back to the base model"},
    ]})

    edit_id: str | None = None
    to_version: int | None = Field(None, ge=0, description="roll back every active edit made after this version")
    author: str = Field("anonymous", max_length=200)
    note: str = Field("", max_length=2000)

    @model_validator(mode="after")
    def _one_form(self) -> "RollbackRequest":
        if (self.edit_id is None) == (self.to_version is None):
            raise PydanticCustomError("rollback_form", "send either edit_id or to_version")
        return self


class RollbackPublic(BaseModel):
    rolled_back: list[str]
    version: int


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    reason: str
    version: int
    active_edits: int
    weights: str = Field(description="hash of the edited matrices: replicas at the same version agree")
    model_fingerprint: str
    editor_fingerprint: str
    log_key: str
