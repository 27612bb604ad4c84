from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query

from editor_core import EditRequest

from ..deps import MetricsDep, RuntimeDep
from ..runtime import EditEntry
from ..schemas import (
    EditCreate,
    EditItem,
    EditPublic,
    EditRecord,
    EditsPage,
    RollbackPublic,
    RollbackRequest,
    TargetScores,
)

router = APIRouter(tags=["edits"])

# A retry with the key of an earlier request gets that request's outcome and writes nothing: safe to retry after a
# timeout, when the client cannot know whether its edit was recorded.
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=200, description=(
    "any unique string per intended change; a request repeated with the same key returns the first one's outcome"))]


def to_record(e: EditEntry) -> EditRecord:
    b = e.body
    return EditRecord(edit_id=e.edit_id, version=e.version, status=e.status,
                      requests=[EditItem(**r) for r in b["requests"]], author=b["author"], note=b["note"],
                      force=b["force"], time=b["time"], pre_scores=b["pre"], rank=b["rank"], bytes=b["bytes"],
                      guard=b.get("guard", {}), rollback=e.rollback)  # events from before the guard have none


@router.post("/edit", status_code=201)
def create_edit(body: EditCreate, runtime: RuntimeDep, metrics: MetricsDep,
                idempotency_key: IdempotencyKey = None) -> EditPublic:
    items = body.items()
    out = runtime.edit([EditRequest(i.prompt, i.target) for i in items], body.author, body.note, body.force,
                       idempotency_key)
    if not out.repeated:
        metrics.edits.inc()
    scores = [TargetScores(prompt=i.prompt, target=i.target, pre_logprob=a.logprob, pre_exact=a.exact,
                           post_logprob=b.logprob, post_exact=b.exact) for i, a, b in zip(items, out.pre, out.post)]
    return EditPublic(edit_id=out.edit_id, version=out.version, scores=scores, rank=out.rank, bytes=out.nbytes,
                      elapsed_ms=out.elapsed_ms)


@router.post("/rollback")
def rollback(body: RollbackRequest, runtime: RuntimeDep, metrics: MetricsDep,
             idempotency_key: IdempotencyKey = None) -> RollbackPublic:
    out = runtime.rollback(body.edit_id, body.to_version, body.author, body.note, idempotency_key)
    if not out.repeated:
        metrics.rollbacks.inc()
    return RollbackPublic(rolled_back=out.rolled_back, version=out.version)


@router.get("/edits")
def list_edits(runtime: RuntimeDep, status: Literal["active", "rolled_back"] | None = None,
               offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> EditsPage:
    rows, count = runtime.list_edits(status, offset, limit)
    return EditsPage(data=[to_record(e) for e in rows], count=count, offset=offset, limit=limit)


@router.get("/edits/{edit_id}")
def get_edit(edit_id: str, runtime: RuntimeDep) -> EditRecord:
    return to_record(runtime.entry(edit_id))
