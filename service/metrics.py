"""Prometheus metrics, on a registry per app (tests and replicas in one process must not share counters)."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class DriftCollector(Collector):
    """Read at scrape time: ||W - W0||_F per edited matrix and the live model's canary agreement.

    The runtime caches both per log version, so a scrape costs a canary pass only after the weights changed.
    """

    def __init__(self, drift: Callable[[], dict[str, float]], agreement: Callable[[], float | None]) -> None:
        self.drift, self.agreement = drift, agreement

    def describe(self) -> list[GaugeMetricFamily]:  # names only: registering must not run a canary pass
        return [GaugeMetricFamily("mend_weight_drift", "", labels=["param"]),
                GaugeMetricFamily("mend_canary_agreement", "")]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        drift = GaugeMetricFamily("mend_weight_drift", "Frobenius norm of W - W0 per edited matrix (W0 = base)",
                                  labels=["param"])
        for name, value in self.drift().items():
            drift.add_metric([name], value)
        yield drift
        agreement = self.agreement()
        if agreement is not None:  # no canaries configured: no number to report
            yield GaugeMetricFamily("mend_canary_agreement", "share of guard canaries answered as by the base model",
                                    value=agreement)


PIECE_METRICS = {  # EditMethod.piece_stats() key -> (metric, help)
    "bytes": ("mend_piece_cache_bytes", "bytes of scoped edits' factors held in memory"),
    "held": ("mend_piece_cache_edits", "scoped edits whose factors are held in memory"),
    "hits": ("mend_piece_cache_hits", "selections that found their edit's factors held"),
    "misses": ("mend_piece_recomputes", "scoped edits recomputed from their logged definition"),
    "mismatches": ("mend_piece_recompute_mismatches", "recomputations whose factors differ from the logged digest"),
    "recompute_s": ("mend_piece_recompute_seconds", "total time spent recomputing scoped edits"),
    "nonfinite": ("mend_piece_nonfinite", "imported edits whose first computation was not finite (they apply "
                                          "nothing)"),
}


class PieceCollector(Collector):
    """Read at scrape time: the scoped edits' factor store (`EditMethod.piece_stats`); nothing for in place."""

    def __init__(self, stats: Callable[[], dict[str, float]]) -> None:
        self.stats = stats

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, "") for name, _ in PIECE_METRICS.values()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for key, value in self.stats().items():
            name, text = PIECE_METRICS[key]
            yield GaugeMetricFamily(name, text, value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.edits = Counter("mend_edits", "edits made through this replica's /edit", registry=self.registry)
        self.rollbacks = Counter("mend_rollbacks", "rollbacks made through this replica", registry=self.registry)
        self.latency = Histogram("mend_request_seconds", "request latency by endpoint", ["method", "endpoint"],
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                                 registry=self.registry)
        self.responses = Counter("mend_responses", "responses by endpoint and status",
                                 ["method", "endpoint", "status"], registry=self.registry)
        self.active = Gauge("mend_active_edits", "edits applied and not rolled back", registry=self.registry)
        self.log_events = Gauge("mend_log_events", "edit log events applied (the version)", registry=self.registry)

    def bind(self, active: Callable[[], float], log_events: Callable[[], float],
             drift: Callable[[], dict[str, float]], agreement: Callable[[], float | None],
             pieces: Callable[[], dict[str, float]] = dict) -> None:
        self.active.set_function(active)
        self.log_events.set_function(log_events)
        self.registry.register(DriftCollector(drift, agreement))
        self.registry.register(PieceCollector(pieces))

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def install(self, app: FastAPI) -> None:
        @app.middleware("http")
        async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            t0 = time.perf_counter()
            status = 500  # a bug raises through here to the catch-all handler outside: count it as the 500 it becomes
            try:
                response = await call_next(request)
                status = response.status_code
                return response
            finally:
                route = request.scope.get("route")
                endpoint = route.path if route else "unmatched"  # the template, so ids do not explode the labels
                self.latency.labels(request.method, endpoint).observe(time.perf_counter() - t0)
                self.responses.labels(request.method, endpoint, str(status)).inc()
