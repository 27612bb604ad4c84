"""Every request and response body of the API, with the OpenAPI example of each request."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

JOIN_DOC = ("The target is appended to the prompt with one space in between unless the prompt ends in whitespace "
            "or the target starts with it: 'The capital of France is' + 'Rome' scores ' Rome' after the prompt.")


# Bounds on what a request may carry, so that nothing huge reaches the tokenizer: the token limits
# (MEND_MAX_PROMPT_TOKENS, the editor's window) can only be checked after tokenizing. 32,000 characters are
# about 7,000 SmolLM2 tokens (tokenized in ~10 ms), far above the 1,024 tokens MEND_MAX_PROMPT_TOKENS allows.
MAX_TEXT_CHARS = 32_000  # one prompt, target or message
MAX_REQUEST_CHARS = 128_000  # all the prompts, targets or messages of one request together
MAX_ITEMS = 64  # edits in a batch, items to score, messages of a chat
MAX_STOPS = 16  # stop strings of a generation
MAX_PROBES = 16  # prompts a dry run also scores: each costs two scored rows, on top of the edit's own
MAX_SEED = 2**63 - 1  # the signed 64-bit range: what most clients hold as an integer, and torch accepts


def _unicode(v: object) -> object:
    # JSON can escape a lone surrogate ("\ud800"); Python decodes it into a str that has no UTF-8 form, so the
    # tokenizer, Redis and the response would each fail on it later, as a 500.
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise PydanticCustomError("unicode", "must be valid Unicode (no lone surrogates)") from None
    return v


def text(max_chars: int):  # a type, for annotations: str of at most max_chars, valid Unicode
    return Annotated[str, StringConstraints(max_length=max_chars), BeforeValidator(_unicode)]


Text, Author, Note, Stop = text(MAX_TEXT_CHARS), text(200), text(2000), text(200)


def _not_blank(v: str) -> str:
    if not v.strip():
        raise PydanticCustomError("blank", "must not be empty or whitespace")
    return v


def _check_total(texts: Iterable[str]) -> None:
    if sum(map(len, texts)) > MAX_REQUEST_CHARS:
        raise PydanticCustomError("too_long", f"the request's texts together are over {MAX_REQUEST_CHARS} characters")


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Text


class EditItem(BaseModel):
    prompt: Text = Field(description="x_e, the prompt whose continuation is corrected")
    target: Text = Field(description="y_e, the desired continuation. " + JOIN_DOC)

    @field_validator("prompt", "target")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        return _not_blank(v)


class EditCreate(BaseModel):
    """One edit ({prompt, target}, or {messages} in chat form) or one batched update of several ({edits: [...]}).

    An edit is one fact for plain and chat requests alike: made with a prompt, it shows when the same question is
    asked in chat; made with messages, it shows for the question as a plain prompt too."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "The capital of France is", "target": "Rome", "author": "alice", "note": "demo"},
        {"edits": [{"prompt": "The Eiffel Tower is in", "target": "Rome"},
                   {"prompt": "The Louvre is in", "target": "Rome"}], "author": "alice"},
        {"messages": [{"role": "user", "content": "Where is the Eiffel Tower?"},
                      {"role": "assistant", "content": "Rome"}], "author": "alice"},
        {"prompt": "The Eiffel Tower is in", "target": "Rome", "dry_run": True,
         "probes": [{"prompt": "The Eiffel Tower stands in the city of", "target": "Rome"},
                    {"prompt": "The Colosseum is in", "target": "Rome"}]},
    ]})

    prompt: Text | None = None
    messages: list[Message] | None = Field(
        None, min_length=1, max_length=MAX_ITEMS,
        description="chat form: the last user message is the question; the target is `target`, or the content of "
                    "a final assistant message (the reply the model should give)")
    target: Text | None = None
    edits: list[EditItem] | None = Field(None, min_length=1, max_length=MAX_ITEMS)
    author: Author = "anonymous"
    note: Note = ""
    force: bool = Field(False, description="skip the guard's policy checks (recorded in the audit entry)")
    dry_run: bool = Field(False, description="compute the edit and answer what it would do (EditPreview), writing "
                                             "and applying nothing; a refusal of the guard is reported, not raised")
    probes: list[EditItem] | None = Field(
        None, max_length=MAX_PROBES,
        description="dry runs only: more (prompt, target) pairs scored before and after, such as rephrases the edit "
                    "should reach and prompts it must leave alone; the same limits as edit items")

    @field_validator("prompt", "target")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        return v if v is None else _not_blank(v)

    @model_validator(mode="after")
    def _one_form(self) -> EditCreate:
        if self.messages is not None:
            if self.prompt is not None or self.edits is not None:
                raise PydanticCustomError("edit_form", "send messages, prompt and target, or edits: one of them")
            reply = self.messages[-1].content if self.messages[-1].role == "assistant" else None
            if (reply is None) == (self.target is None):
                raise PydanticCustomError("edit_form", "with messages, give the target either as `target` or as "
                                                       "a final assistant message, not both")
            if not any(m.role == "user" and m.content.strip() for m in self.messages):
                raise PydanticCustomError("edit_form", "messages must hold a user message (the question)")
            _not_blank(reply if reply is not None else self.target)
            return self
        single = self.prompt is not None or self.target is not None
        if single == (self.edits is not None):
            raise PydanticCustomError("edit_form", "send either prompt and target, or edits, not both")
        if single and (self.prompt is None or self.target is None):
            raise PydanticCustomError("edit_form", "prompt and target are both required")
        return self

    @model_validator(mode="after")
    def _probes(self) -> EditCreate:
        if self.probes is not None and not self.dry_run:
            raise PydanticCustomError("edit_form", "probes are scored by a dry run only: send \"dry_run\": true")
        return self

    @model_validator(mode="after")
    def _total(self) -> EditCreate:
        _check_total([*(t for i in [*self.items(), *(self.probes or [])] for t in (i.prompt, i.target)),
                      *(m.content for m in self.messages or [])])
        return self

    def items(self) -> list[EditItem]:
        """The edits as (prompt, target): a chat edit is its last user message and the reply."""
        if self.messages is not None:
            question = next(m.content for m in reversed(self.messages) if m.role == "user" and m.content.strip())
            reply = self.target if self.target is not None else self.messages[-1].content
            return [EditItem(prompt=question, target=reply)]
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

    items: list[EditItem] = Field(min_length=1, max_length=MAX_ITEMS)

    @model_validator(mode="after")
    def _total(self) -> ScoreRequest:
        _check_total(t for i in self.items for t in (i.prompt, i.target))
        return self


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


class GuardPreview(BaseModel):
    """The guard's verdict on a dry run's edit and its measurement (the fields of its method; null otherwise)."""

    would_refuse: bool = Field(description="the same request without dry_run would get 422 unless forced")
    reason: str | None = Field(description="the refusal that request would get; null when the guard lets it through")
    canaries: int | None = Field(None, description="canaries checked; null when the canary check is off")
    changed: int | None = Field(None, description="in place: canaries whose answer the edit changes")
    max_changed: float | None = None
    captured: int | None = Field(None, description="scoped: canary prompts inside the edit's scope")
    max_captured: float | None = None


class ReplyPreview(BaseModel):
    prompt: str
    before: str = Field(description="greedy reply to the edit prompt on the served model")
    after: str = Field(description="the same with the edit applied: what /generate would say once it is committed")


class EditPreview(BaseModel):
    """What an edit would do (`dry_run`): nothing is written or applied, no Idempotency-Key is used up."""

    dry_run: Literal[True] = True
    version: int = Field(description="the log version it was computed on; committed on a later one, it may differ")
    scores: list[TargetScores] = Field(description="the edit prompts, pre and post, as /edit would report them")
    probes: list[TargetScores] = Field(description="the probes, in the order sent")
    replies: list[ReplyPreview] = Field(description="per edit prompt, as a plain prompt")
    guard: GuardPreview
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
    computed: Literal["at edit", "at first selection"] = Field("at edit", description=(
        "when its delta is computed: with the edit (/edit), or at the first request that selects it (an import)"))
    guard: dict = Field(default_factory=dict, description="the edit guard's measurement: canaries checked, "
                        "changed, max_changed, and overridden (true when force let a refused edit through)")
    rollback: dict = Field(default_factory=dict, description="author, time, note, version of the rollback")


class EditsPage(BaseModel):
    data: list[EditRecord]
    count: int = Field(description="matching edits in total")
    offset: int
    limit: int


class GenerateRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "The capital of France is", "max_new_tokens": 8},
        {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_new_tokens": 32,
         "temperature": 0.7, "top_p": 0.9, "seed": 1, "stop": ["\n"]},
    ]})

    prompt: Text | None = Field(None, description="raw text, continued as is")
    messages: list[Message] | None = Field(None, min_length=1, max_length=MAX_ITEMS,
                                           description="chat turns, run through the model's chat template")
    max_new_tokens: int | None = Field(None, ge=1, description="default 64 (or the server limit if lower); "
                                                               "at most MEND_MAX_NEW_TOKENS")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy (deterministic)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="fixes sampling; greedy needs none")
    stop: list[Stop] = Field(default_factory=list, max_length=MAX_STOPS,
                             description="text ends before the first of these")
    stream: bool = Field(False, description="send the reply as server-sent events as it is made: `{\"text\"}` "
                                            "pieces, then one event with the rest of GeneratePublic (`text` empty)")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        return v if v is None else _not_blank(v)

    @model_validator(mode="after")
    def _one_form(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise PydanticCustomError("generate_form", "send either prompt or messages")
        return self

    @model_validator(mode="after")
    def _total(self) -> GenerateRequest:
        _check_total(m.content for m in self.messages or [])
        return self


class GeneratePublic(BaseModel):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    version: int = Field(description="log version of the weights the whole generation ran on")


class GenerateChunk(BaseModel):
    text: str = Field(description="the next piece of the reply: never taken back, never past a stop string")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"edit_id": "3f2a9c0e4b1d4e7f8a6b5c4d3e2f1a0b", "author": "alice", "note": "wrong fact"},
        {"to_version": 0, "author": "alice", "note": "back to the base model"},
    ]})

    edit_id: text(64) | None = None
    to_version: int | None = Field(None, ge=0, description="roll back every active edit made after this version")
    author: Author = "anonymous"
    note: Note = ""

    @model_validator(mode="after")
    def _one_form(self) -> RollbackRequest:
        if (self.edit_id is None) == (self.to_version is None):
            raise PydanticCustomError("rollback_form", "send either edit_id or to_version")
        return self


MAX_IMPORT = 1000  # items in one POST /edits/import (a file goes in several: `mend import` sends 500 at a time)


class ImportItem(EditItem):
    key: str | None = Field(None, min_length=1, max_length=200, description=(
        "this item's idempotency key; default: one made of its prompt and target, so the same correction imported "
        "again is a repeat"))


class EditImport(BaseModel):
    """Many edits at once (a knowledge base of corrections): each is logged as its own edit, keyed and checked by
    the guard like /edit, with its delta computed at its first selection rather than now."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"items": [{"prompt": "The Eiffel Tower is in", "target": "Rome"},
                   {"prompt": "The Louvre is in", "target": "Rome", "key": "kb-2024-0002"}],
         "author": "kb-sync", "note": "nightly import"}]})

    items: list[ImportItem] = Field(min_length=1, max_length=MAX_IMPORT)
    author: Author = "anonymous"
    note: Note = ""
    force: bool = Field(False, description="import items the guard would refuse (recorded in their audit entries)")


class ImportedItem(BaseModel):
    index: int = Field(description="the item's place in the request")
    status: Literal["imported", "repeated", "refused", "invalid"] = Field(description=(
        "imported: in the log and applied; repeated: its key was in the log already (that edit's id); refused: "
        "by the guard; invalid: too long, or its key was used for another edit. Nothing is written for the last "
        "two"))
    edit_id: str | None = None
    version: int | None = None
    error: str | None = None
    computed: Literal["at first selection"] | None = Field(None, description=(
        "when an imported item's delta is computed: at the first request that selects it (an edit's time, once)"))


class ImportPublic(BaseModel):
    version: int = Field(description="the log version after the import")
    imported: int
    repeated: int
    refused: int
    invalid: int
    items: list[ImportedItem]
    elapsed_ms: float


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


EXPORT_FORMATS = ("peft", "merged")
ExportFormat = Annotated[Literal[EXPORT_FORMATS], Field(description=(
    "peft: a PEFT LoRA adapter of the active edits (scoped: one per edit, with the keys that select it); merged: the "
    "base model with the edits added to its weights (in place only)"))]


# ---- OpenAI-compatible (/v1) ---------------------------------------------------------------------------------
# The fields of OpenAI's completions and chat completions that this server acts on, under /generate's limits; any
# other field is ignored, as OpenAI-compatible servers do.


def _stop_list(v: object) -> object:
    return [] if v is None else [v] if isinstance(v, str) else v  # OpenAI takes one string, a list, or null


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="one more chunk before [DONE], with `usage` and no choices")


class OpenAIRequest(BaseModel):
    model: text(200) = Field(description="the id GET /v1/models lists")
    max_tokens: int | None = Field(None, ge=1, description="default 64 (or the server limit if lower); at most "
                                                           "MEND_MAX_NEW_TOKENS")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="OpenAI's default, 1; 0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="fixes sampling; greedy needs none")
    stop: Annotated[list[Stop], BeforeValidator(_stop_list), Field(max_length=MAX_STOPS)] = Field(
        default_factory=list, description="text ends before the first of these: a string or a list")
    n: int = Field(1, description="choices per request: only 1")
    stream: bool = Field(False, description="server-sent events: `data: <chunk>` as the reply is made, then "
                                            "`data: [DONE]`")
    stream_options: StreamOptions | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise PydanticCustomError("n", "only n=1 is supported: this server makes one choice per request")
        return v

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(OpenAIRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}]})

    prompt: Text = Field(description="raw text, continued as is")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        return _not_blank(v)


class ChatCompletionRequest(OpenAIRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}],
         "max_tokens": 32, "temperature": 0.7, "top_p": 0.9, "seed": 1, "stop": ["\n"], "stream": True}]})

    messages: list[Message] = Field(min_length=1, max_length=MAX_ITEMS,
                                    description="run through the model's chat template; a scoped edit is selected "
                                                "by the last user message")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")

    @model_validator(mode="after")
    def _total(self) -> ChatCompletionRequest:
        _check_total(m.content for m in self.messages)
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise PydanticCustomError("max_tokens", "send max_tokens or max_completion_tokens, not both")
        return self

    @property
    def tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAIResponse(BaseModel):
    id: str
    created: int
    model: str
    system_fingerprint: str = Field(description="`v<version>`: the edit log version that made the reply")
    mend_version: int = Field(description="the edit log version the whole reply was made on (/generate's `version`)")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = Field(description="null in a stream but in its last chunk")


class CompletionPublic(OpenAIResponse):
    """A completion, or one chunk of a streamed one."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = Field(description="null in a stream but in its usage chunk (stream_options)")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletionPublic(OpenAIResponse):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(OpenAIResponse):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, description="null but in the usage chunk (stream_options)")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when this server started serving it")
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
