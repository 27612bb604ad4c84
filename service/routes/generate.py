from __future__ import annotations

import json
from collections.abc import Generator

from fastapi import APIRouter
from fastapi.responses import Response

from editor_core import EditRequest

from ..deps import RuntimeDep
from ..errors import ServiceError
from ..runtime import Generation, Runtime
from ..schemas import GenerateChunk, GeneratePublic, GenerateRequest, Score, ScorePublic, ScoreRequest
from ..sse import STREAMS, event_stream

router = APIRouter(tags=["generate"])
STREAM_ERROR = json.dumps({"detail": ServiceError.message})  # the last event of a stream that fails after its 200


@router.post("/generate", response_model=GeneratePublic, responses=STREAMS)
def generate(body: GenerateRequest, runtime: RuntimeDep) -> Response | GeneratePublic:
    messages = [m.model_dump() for m in body.messages] if body.messages is not None else None
    args = (body.prompt, messages, body.max_new_tokens, body.temperature, body.top_p, body.seed, body.stop)
    if body.stream:
        return event_stream(_events(runtime, runtime.checked(*args)), STREAM_ERROR)
    out, n_prompt, version = runtime.generate(*args)
    return GeneratePublic(text=out.text, prompt_tokens=n_prompt, completion_tokens=out.tokens,
                          finish_reason=out.finish_reason, version=version)


def _events(runtime: Runtime, g: Generation) -> Generator[str, None, None]:
    with runtime.streaming(g) as pieces:
        for piece in pieces:
            yield GenerateChunk(text=piece).model_dump_json()
    yield GeneratePublic(text="", prompt_tokens=len(g.ids), completion_tokens=g.completion.tokens,
                         finish_reason=g.completion.finish_reason, version=g.version).model_dump_json()


@router.post("/score")
def score(body: ScoreRequest, runtime: RuntimeDep) -> ScorePublic:
    scores, version = runtime.score([EditRequest(i.prompt, i.target) for i in body.items])
    return ScorePublic(version=version, scores=[
        Score(prompt=i.prompt, target=i.target, logprob=s.logprob, exact=s.exact, argmax_ids=list(s.argmax))
        for i, s in zip(body.items, scores)])
