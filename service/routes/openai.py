"""OpenAI-compatible completions and chat completions: the edited model served exactly as /generate serves it
(Runtime.generate, or Runtime.streaming for `stream: true`), in OpenAI's shapes, so OpenAI's clients work as is."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Generator

from fastapi import APIRouter
from fastapi.responses import Response

from ..deps import RuntimeDep, SettingsDep
from ..errors import OPENAI_PREFIX, BadRequest, ServiceError, UnknownModel, openai_error
from ..runtime import Generation, Runtime
from ..schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionPublic,
    ChatCompletionRequest,
    CompletionChoice,
    CompletionPublic,
    CompletionRequest,
    Delta,
    ModelCard,
    ModelList,
    OpenAIRequest,
    Usage,
)
from ..settings import Settings
from ..sse import STREAMS, event_stream

router = APIRouter(prefix=OPENAI_PREFIX, tags=["openai"])

STARTED = int(time.time())  # the model card's `created`: when this process started serving it
# The last event of a stream that fails after its 200: OpenAI's clients raise it as an APIError.
STREAM_ERROR = json.dumps(openai_error(500, ServiceError.message))


@router.get("/models")
def models(settings: SettingsDep) -> ModelList:
    return ModelList(data=[ModelCard(id=settings.model, created=STARTED, owned_by="mend-service")])


@router.post("/completions", response_model=CompletionPublic, responses=STREAMS)
def completions(body: CompletionRequest, runtime: RuntimeDep, settings: SettingsDep) -> Response | CompletionPublic:
    _check(body, body.max_tokens, settings)
    args = (body.prompt, None, body.max_tokens, body.temperature, body.top_p, body.seed, body.stop)
    if body.stream:
        return event_stream(_completion_chunks(runtime, runtime.checked(*args), body), STREAM_ERROR)
    out, n_prompt, version = runtime.generate(*args)
    return CompletionPublic(**_head("cmpl", body, version), usage=_usage(n_prompt, out.tokens),
                            choices=[CompletionChoice(text=out.text, finish_reason=out.finish_reason)])


@router.post("/chat/completions", response_model=ChatCompletionPublic, responses=STREAMS)
def chat_completions(body: ChatCompletionRequest, runtime: RuntimeDep,
                     settings: SettingsDep) -> Response | ChatCompletionPublic:
    _check(body, body.tokens, settings)
    messages = [m.model_dump() for m in body.messages]
    args = (None, messages, body.tokens, body.temperature, body.top_p, body.seed, body.stop)
    if body.stream:
        return event_stream(_chat_chunks(runtime, runtime.checked(*args), body), STREAM_ERROR)
    out, n_prompt, version = runtime.generate(*args)
    return ChatCompletionPublic(**_head("chatcmpl", body, version), usage=_usage(n_prompt, out.tokens), choices=[
        ChatChoice(message=AssistantMessage(content=out.text), finish_reason=out.finish_reason)])


def _check(body: OpenAIRequest, tokens: int | None, settings: Settings) -> None:
    if body.model != settings.model:
        raise UnknownModel(f"model '{body.model}' is not served here: this server serves '{settings.model}' "
                           f"(GET /v1/models)")
    if tokens is not None and tokens > settings.max_new_tokens:  # the runtime's check, in this API's words
        raise BadRequest(f"max_tokens is over the limit of {settings.max_new_tokens}", param="max_tokens")


def _head(kind: str, body: OpenAIRequest, version: int) -> dict:
    return {"id": f"{kind}-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model,
            "system_fingerprint": f"v{version}", "mend_version": version}


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _completion_chunks(runtime: Runtime, g: Generation, body: CompletionRequest) -> Generator[str, None, None]:
    with runtime.streaming(g) as pieces:
        head = _head("cmpl", body, g.version)  # one id for every chunk, as OpenAI sends
        for piece in pieces:
            yield CompletionPublic(**head, choices=[CompletionChoice(text=piece, finish_reason=None)],
                                   usage=None).model_dump_json()
    yield CompletionPublic(**head, choices=[CompletionChoice(text="", finish_reason=g.completion.finish_reason)],
                           usage=None).model_dump_json()
    yield from _end(CompletionPublic, head, g, body)


def _chat_chunks(runtime: Runtime, g: Generation, body: ChatCompletionRequest) -> Generator[str, None, None]:
    with runtime.streaming(g) as pieces:
        head = _head("chatcmpl", body, g.version)
        yield _chat_chunk(head, Delta(role="assistant", content=""))
        for piece in pieces:
            yield _chat_chunk(head, Delta(content=piece))
    yield _chat_chunk(head, Delta(), g.completion.finish_reason)
    yield from _end(ChatCompletionChunk, head, g, body)


def _chat_chunk(head: dict, delta: Delta, finish_reason: str | None = None) -> str:
    choice = ChatChunkChoice(delta=delta, finish_reason=finish_reason)
    return ChatCompletionChunk(**head, choices=[choice]).model_dump_json()


def _end(chunk: type[CompletionPublic | ChatCompletionChunk], head: dict, g: Generation,
         body: OpenAIRequest) -> Generator[str, None, None]:
    if body.include_usage:
        yield chunk(**head, choices=[], usage=_usage(len(g.ids), g.completion.tokens)).model_dump_json()
    yield "[DONE]"
