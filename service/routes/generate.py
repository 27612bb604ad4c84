from __future__ import annotations

from fastapi import APIRouter

from editor_core import EditRequest

from ..deps import RuntimeDep
from ..schemas import GeneratePublic, GenerateRequest, Score, ScorePublic, ScoreRequest

router = APIRouter(tags=["generate"])


@router.post("/generate")
def generate(body: GenerateRequest, runtime: RuntimeDep) -> GeneratePublic:
    messages = [m.model_dump() for m in body.messages] if body.messages is not None else None
    out, n_prompt, version = runtime.generate(body.prompt, messages, body.max_new_tokens, body.temperature,
                                              body.top_p, body.seed, body.stop)
    return GeneratePublic(text=out.text, prompt_tokens=n_prompt, completion_tokens=out.tokens,
                          finish_reason=out.finish_reason, version=version)


@router.post("/score")
def score(body: ScoreRequest, runtime: RuntimeDep) -> ScorePublic:
    scores, version = runtime.score([EditRequest(i.prompt, i.target) for i in body.items])
    return ScorePublic(version=version, scores=[
        Score(prompt=i.prompt, target=i.target, logprob=s.logprob, exact=s.exact, argmax_ids=list(s.argmax))
        for i, s in zip(body.items, scores)])
