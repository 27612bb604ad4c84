"""Typed dependencies: the runtime, settings and metrics of the app, and the bearer-key checks (main.py applies
them)."""
from __future__ import annotations

import ipaddress
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import NotReady, OpenWithoutKey, Unauthorized
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


def refuse_open_network(request: Request, settings: SettingsDep) -> None:
    """`mend serve` will not bind a non-loopback address without a key (Settings); an app started another way
    (`uvicorn --factory --host 0.0.0.0`) is caught here, per connection: one that arrived on a non-loopback
    address of this machine is refused."""
    if settings.api_key is not None or settings.allow_no_key:
        return
    host = (request.scope.get("server") or ("",))[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a unix socket path or an in-process test transport: no network interface
        return
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback (Python < 3.13 says it is not)
    if not address.is_loopback:
        raise OpenWithoutKey()
