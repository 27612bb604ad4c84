from __future__ import annotations

import time
from collections import Counter
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response

from editor_core import EditRequest

from ..deps import MetricsDep, RuntimeDep
from ..runtime import EditEntry, Runtime
from ..schemas import (
    EditCreate,
    EditImport,
    EditItem,
    EditPreview,
    EditPublic,
    EditRecord,
    EditsPage,
    GuardPreview,
    ImportedItem,
    ImportPublic,
    ReplyPreview,
    RollbackPublic,
    RollbackRequest,
    TargetScores,
)

router = APIRouter(tags=["edits"])
REPLY_TOKENS = 24  # of a dry run's replies: enough to read what the model now says, at 48 tokens of generation

# A retry with the key of an earlier request gets that request's outcome and writes nothing: safe to retry after a
# timeout, when the client cannot know whether its edit was recorded.
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=200, description=(
    "any unique string per intended change; a request repeated with the same key returns the first one's outcome"))]


def to_record(e: EditEntry) -> EditRecord:
    b = e.body
    return EditRecord(edit_id=e.edit_id, version=e.version, status=e.status,
                      requests=[EditItem(**r) for r in b["requests"]], author=b["author"], note=b["note"],
                      force=b["force"], time=b["time"], pre_scores=b["pre"], rank=b["rank"], bytes=b["bytes"],
                      computed=b.get("computed", "at edit"),
                      guard=b.get("guard", {}), rollback=e.rollback)  # events from before the guard have none


def target_scores(items: list[EditItem], pre: list, post: list) -> list[TargetScores]:
    return [TargetScores(prompt=i.prompt, target=i.target, pre_logprob=a.logprob, pre_exact=a.exact,
                         post_logprob=b.logprob, post_exact=b.exact) for i, a, b in zip(items, pre, post)]


# A dry run answers 200 with another body: returned as a Response, which the 201's response model does not check.
@router.post("/edit", status_code=201, response_model=EditPublic,
             responses={200: {"model": EditPreview, "description": "dry_run: what the edit would do; nothing written"}})
def create_edit(body: EditCreate, runtime: RuntimeDep, metrics: MetricsDep,
                idempotency_key: IdempotencyKey = None) -> EditPublic | Response:
    items = body.items()
    if body.dry_run:  # writes nothing, so the Idempotency-Key is not used up
        return Response(preview(items, body.probes or [], runtime).model_dump_json(), media_type="application/json")
    out = runtime.edit([EditRequest(i.prompt, i.target) for i in items], body.author, body.note, body.force,
                       idempotency_key)
    if not out.repeated:
        metrics.edits.inc()
    return EditPublic(edit_id=out.edit_id, version=out.version, scores=target_scores(items, out.pre, out.post),
                      rank=out.rank, bytes=out.nbytes, elapsed_ms=out.elapsed_ms)


def preview(items: list[EditItem], probes: list[EditItem], runtime: Runtime) -> EditPreview:
    out = runtime.preview([EditRequest(i.prompt, i.target) for i in items],
                          [EditRequest(p.prompt, p.target) for p in probes], REPLY_TOKENS)
    n, v = len(items), out.verdict
    return EditPreview(version=out.version, scores=target_scores(items, out.pre[:n], out.post[:n]),
                       probes=target_scores(probes, out.pre[n:], out.post[n:]),
                       replies=[ReplyPreview(prompt=i.prompt, before=a, after=b)
                                for i, (a, b) in zip(items, out.replies)],
                       guard=GuardPreview(would_refuse=v.reason is not None, reason=v.reason, **v.measurement),
                       rank=out.rank, bytes=out.nbytes, elapsed_ms=out.elapsed_ms)


@router.post("/edits/import")
def import_edits(body: EditImport, runtime: RuntimeDep, metrics: MetricsDep) -> ImportPublic:
    t0 = time.perf_counter()
    out = runtime.import_edits([EditRequest(i.prompt, i.target) for i in body.items], [i.key for i in body.items],
                               body.author, body.note, body.force)
    items = [ImportedItem(index=n, status=o.status, edit_id=o.edit_id, version=o.version, error=o.error,
                          computed="at first selection" if o.status == "imported" else None)
             for n, o in enumerate(out)]
    counts = Counter(o.status for o in out)
    metrics.edits.inc(counts["imported"])
    return ImportPublic(version=runtime.version, imported=counts["imported"], repeated=counts["repeated"],
                        refused=counts["refused"], invalid=counts["invalid"], items=items,
                        elapsed_ms=(time.perf_counter() - t0) * 1000)


@router.post("/rollback")
def rollback(body: RollbackRequest, runtime: RuntimeDep, metrics: MetricsDep,
             idempotency_key: IdempotencyKey = None) -> RollbackPublic:
    out = runtime.rollback(body.edit_id, body.to_version, body.author, body.note, idempotency_key)
    if not out.repeated:
        metrics.rollbacks.inc()
    return RollbackPublic(rolled_back=out.rolled_back, version=out.version)


@router.get("/edits")
def list_edits(runtime: RuntimeDep, status: Literal["active", "rolled_back"] | None = None,
               author: Annotated[str | None, Query(max_length=200, description="exactly this author")] = None,
               order: Annotated[Literal["oldest", "newest"], Query(description="oldest first is log order")] = "oldest",
               offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> EditsPage:
    rows, count = runtime.list_edits(status, author, order == "newest", offset, limit)
    return EditsPage(data=[to_record(e) for e in rows], count=count, offset=offset, limit=limit)


@router.get("/edits/{edit_id}")
def get_edit(edit_id: str, runtime: RuntimeDep) -> EditRecord:
    return to_record(runtime.entry(edit_id))
