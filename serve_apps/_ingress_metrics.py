"""The ingress's Prometheus metrics: each ingress replica counts its own and pushes them to the app's monitor
(monitor.py), whose merged view `/metrics` answers (docs/metrics.md lists every series)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LATENCY_BUCKETS", "IngressMetrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class IngressMetrics:
    """Per-ingress-replica Prometheus metrics (each replica exposes its own /metrics)."""

    def __init__(self, slo_bounds_s: Iterable[float] = ()) -> None:
        """`slo_bounds_s`: latency bounds of the app's SLOs, made bucket bounds so an SLO's ratio is exact."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelfleet_requests",
            "Inference requests by model, the version that answered, protocol and HTTP status.",
            ["model", "version", "protocol", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelfleet_request_latency_seconds",
            "Inference latency seen by the ingress, by model, the version that answered, and protocol.",
            ["model", "version", "protocol"],
            registry=self.registry,
            buckets=sorted({*LATENCY_BUCKETS, *slo_bounds_s}),
        )
        self.in_flight = Gauge(
            "modelfleet_requests_in_flight",
            "Inference requests the ingress is answering, by model and the version answering.",
            ["model", "version"],
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "modelfleet_cold_starts",
            "Requests that found their model with no running replica (scaled to zero): each waits for a start.",
            ["model", "version"],
            registry=self.registry,
        )
        self.rows = Counter(
            "modelfleet_rows",
            "Rows (batch items) inferred, by model and version.",
            ["model", "version"],
            registry=self.registry,
        )
        self.retries = Counter(
            "modelfleet_replica_retries",
            "Inference calls retried because their replica died before answering.",
            ["model"],
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "modelfleet_batch_rows",
            "Rows in the model batch that served each request (dynamic batching at work).",
            ["model", "version"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.call_requests = Histogram(
            "modelfleet_call_requests",
            "Requests carried by each call to a model's deployment (coalescing at work; see ingress.coalesce).",
            ["model"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.local_calls = Counter(
            "modelfleet_local_hop_calls",
            "Calls to a model's deployment that went over the local hop (a Unix socket to a replica on this node) "
            "instead of a Ray Serve handle (see ingress.local_hop).",
            ["model"],
            registry=self.registry,
        )
        self.standby_requests = Counter(
            "modelfleet_standby_requests",
            "Requests a standby replica answered because the model had no replica of its own (standby:).",
            ["model"],
            registry=self.registry,
        )
        self.payload_dropped = Counter(
            "modelfleet_payload_log_dropped",
            "Payload log events (a request or a response) dropped: the writer's queue was full or an upload failed.",
            ["model"],
            registry=self.registry,
        )
        self.shadow_requests = Counter(
            "modelfleet_shadow_requests",
            "Copies of requests sent to a shadow version (its answer compared, never returned), by outcome: "
            "answered, failed, or skipped (too many copies already in flight).",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.shadow_rows = Counter(
            "modelfleet_shadow_rows",
            "Rows a shadow version answered, by whether its label (argmax of scores, else the value) agreed with the "
            "answering version's.",
            ["model", "version", "agreement"],
            registry=self.registry,
        )
        self._answered: dict[tuple[str, str, str, int], tuple[Any, Any, Any, Any]] = {}
        # One series per live ingress replica in the merged view: how many there are, and which.
        Gauge(
            "modelfleet_ingress_replica",
            "An ingress replica that is alive and counting (one series each).",
            ["replica"],
            registry=self.registry,
        ).labels(f"{socket.gethostname()}:{os.getpid()}").set(1)

    def answered(
        self, model: str, version: str, protocol: str, status: int, seconds: float, rows: int, batch_rows: int
    ) -> None:
        """One inference request done: its status and latency, and for a success its rows and its batch's rows.
        The labelled series are looked up once per (model, version, protocol, status): `labels()` costs more than the
        update, and this runs on every request."""
        key = (model, version, protocol, status)
        series = self._answered.get(key)
        if series is None:
            series = self._answered[key] = (
                self.requests.labels(model, version, protocol, str(status)),
                self.latency.labels(model, version, protocol),
                self.rows.labels(model, version),
                self.batch_rows.labels(model, version),
            )
        requests, latency, rows_done, batches = series
        requests.inc()
        latency.observe(seconds)
        if status == 200:
            rows_done.inc(rows)
            batches.observe(batch_rows)
