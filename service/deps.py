"""Typed dependencies: the runtime, settings and metrics of the app, and the bearer-key checks (main.py applies
them)."""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import NotReady, Unauthorized
from .metrics import Metrics
from .runtime import Runtime
from .settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady()
    return runtime


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def require_key(settings: SettingsDep, credentials: Credentials) -> None:
    if settings.api_key is None:
        return
    given = credentials.credentials.encode() if credentials else b""
    if not secrets.compare_digest(given, settings.api_key.get_secret_value().encode()):
        raise Unauthorized()


def require_key_for_metrics(settings: SettingsDep, credentials: Credentials) -> None:
    # A Prometheus scraper often cannot send a bearer key; the counters and gauges hold no prompts or authors.
    if not settings.metrics_public:
        require_key(settings, credentials)
