from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from ..deps import MetricsDep, RuntimeDep, require_key_for_metrics
from ..schemas import Health, Ready

# Included without the key (main.py): orchestrators call the probes without one. /metrics checks for itself.
router = APIRouter(tags=["health"])


@router.get("/health")
def health(runtime: RuntimeDep) -> Health:
    runtime.touch_device()
    return Health(status="ok")


@router.get("/ready", responses={503: {"model": Ready}})
def ready(runtime: RuntimeDep) -> Ready:
    ok, reason = runtime.readiness()
    body = Ready(ready=ok, reason=reason, version=runtime.version, active_edits=len(runtime.active),
                 weights=runtime.weights_hash(), model_fingerprint=runtime.model_fp,
                 editor_fingerprint=runtime.editor_fp, log_key=runtime.log.key)
    return body if ok else JSONResponse(body.model_dump(), status_code=503)


@router.get("/metrics", response_class=Response, dependencies=[Depends(require_key_for_metrics)])
def metrics(m: MetricsDep) -> Response:
    return m.render()
