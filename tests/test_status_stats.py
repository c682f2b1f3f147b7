"""The status page's numbers (monitoring/status_stats.py) and its rendering (serve_apps/status_page.py), Ray-free."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from monitoring.metrics_hub import MetricsHub, snapshot
from monitoring.status_stats import Totals, latency_quantile, slo_compliance, totals_by_version, window_stats
from serve_apps.spec import AppSpec
from serve_apps.status_page import render_status
from serve_apps.traffic import ModelTraffic, Route

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _served(latencies: np.ndarray, failed: int = 0, version: str = "1") -> MetricsHub:
    registry = CollectorRegistry()
    requests = Counter("modelfleet_requests", "d", ["model", "version", "protocol", "status"], registry=registry)
    latency = Histogram(
        "modelfleet_request_latency_seconds", "d", ["model", "version", "protocol"], registry=registry, buckets=BUCKETS
    )
    for i, seconds in enumerate(latencies):
        requests.labels("digits", version, "v2", "500" if i < failed else "200").inc()
        latency.labels("digits", version, "v2").observe(float(seconds))
    hub = MetricsHub("fleet")
    hub.push("ingress:a", snapshot(registry))
    return hub


def test_quantiles_interpolate_within_buckets_as_prometheus_does() -> None:
    # 100 requests evenly over (0.01, 0.025]: histogram_quantile(0.5) is the bucket's midpoint
    totals = totals_by_version(_served(np.linspace(0.0101, 0.025, 100)).merged())[("digits", "1")]
    assert math.isclose(latency_quantile(0.5, totals.buckets), 0.0175, rel_tol=1e-9)
    assert math.isclose(latency_quantile(0.95, totals.buckets), 0.01 + 0.015 * 0.95, rel_tol=1e-9)
    assert latency_quantile(0.5, {}) is None


def test_window_stats_are_over_the_seconds_between_two_moments() -> None:
    before = totals_by_version(_served(np.full(100, 0.004)).merged())[("digits", "1")]
    after = totals_by_version(_served(np.r_[np.full(100, 0.004), np.full(50, 0.2)], failed=5).merged())[("digits", "1")]
    stats = window_stats(before, after, seconds=10)
    assert stats.rps == 5.0  # 50 more requests in 10 s
    assert stats.error_rate is not None and math.isclose(stats.error_rate, 5 / 50)
    assert stats.p50_ms is not None and 100 < stats.p50_ms <= 250  # only the slow ones are in the window
    assert window_stats(before, before, 10).error_rate is None


def test_slo_compliance_spends_the_budget_by_the_bad_share() -> None:
    totals = totals_by_version(_served(np.r_[np.full(990, 0.004), np.full(10, 0.3)], failed=2).merged())
    compliance = slo_compliance(totals[("digits", "1")], 99.9, {"p95": (0.95, 0.1)})
    assert math.isclose(compliance["availability"]["achieved"], 0.998)
    assert math.isclose(compliance["availability"]["budget_left"], 1 - 0.002 / 0.001)  # missed: negative
    assert math.isclose(compliance["latency_p95"]["achieved"], 0.99)
    assert math.isclose(compliance["latency_p95"]["budget_left"], 1 - 0.01 / 0.05)
    assert slo_compliance(Totals(), 99.9, {}) == {}


def test_the_page_shows_each_model_its_split_and_escapes_what_callers_wrote() -> None:
    spec = AppSpec.model_validate(
        {
            "name": "fleet",
            "models": [
                {
                    "name": name,
                    "format": "builtin",
                    "module": "echo",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
                    **({"slo": {"availability": 99.9}} if name == "digits" else {}),
                }
                for name in ("digits", "echo")
            ],
        }
    )
    hub = _served(np.full(40, 0.004))
    totals = totals_by_version(hub.merged())[("digits", "1")]
    state = {
        "app": "fleet",
        "versions": {
            "digits@1": {
                "model": "digits",
                "version": "1",
                "replicas": {"desired": 2.0, "running": 1.0},
                "window_s": 60.0,
                "rps": 0.67,
                "error_rate": 0.0,
                "p50_ms": 3.2,
                "p95_ms": 4.8,
                "totals": {"requests": totals.requests, "bad": totals.bad, "buckets": totals.buckets},
                "drift": {"reference_loaded": True, "windows": 3, "drifted": True, "features": ["x[0]"]},
            }
        },
    }
    split = {"digits": ModelTraffic("1", (Route("2", "digits@2", weight=25.0), Route("3", "digits@3", shadow=100.0)))}
    deploys = [
        {"time": "t", "action": "deploy", "target": "app:fleet@<script>x</script>", "outcome": "ok", "actor": "u"}
    ]
    page = render_status(spec, split, state, deploys)
    assert 'id="model-digits"' in page and 'id="model-echo"' in page
    assert "75%" in page and "25%" in page and "shadow 100%" in page
    assert "1 / 2" in page and "drifting: x[0]" in page and "availability" in page and "100.000%" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
