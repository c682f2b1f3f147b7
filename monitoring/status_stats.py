"""What a status page shows of a model version, from the app's merged metrics (metrics_hub.py) at two moments:
requests per second, error rate and latency quantiles over the seconds between, and SLO compliance since the first.

Quantiles are read from the latency histogram's buckets as Prometheus's histogram_quantile reads them (linear within
the bucket that holds the rank), so the page and a Prometheus query of the same window agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Totals", "WindowStats", "latency_quantile", "slo_compliance", "totals_by_version", "window_stats"]

REQUESTS = "modelfleet_requests_total"
BUCKETS = "modelfleet_request_latency_seconds_bucket"
BAD_STATUS = ("429",)  # and every 5xx: as the SLO rules count them (slo_rules.BAD_STATUS)

Merged = Mapping[str, tuple[str, str, Mapping[tuple[str, tuple[tuple[str, str], ...]], float]]]


@dataclass
class Totals:
    """One model version's cumulative counts at a moment."""

    requests: float = 0.0
    bad: float = 0.0  # 5xx and 429
    buckets: dict[float, float] = field(default_factory=dict)  # le (seconds) -> requests at or under it

    def minus(self, before: Totals) -> Totals:
        return Totals(
            self.requests - before.requests,
            self.bad - before.bad,
            {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()},
        )


@dataclass
class WindowStats:
    rps: float
    error_rate: float | None  # None without requests
    p50_ms: float | None
    p95_ms: float | None


def totals_by_version(merged: Merged) -> dict[tuple[str, str], Totals]:
    """{(model, version): Totals} from `MetricsHub.merged()` (every protocol summed)."""
    out: dict[tuple[str, str], Totals] = {}
    for family in merged.values():
        for (sample, labels), value in family[2].items():
            if sample not in (REQUESTS, BUCKETS):
                continue
            tags = dict(labels)
            key = (tags.get("model", ""), tags.get("version", ""))
            totals = out.setdefault(key, Totals())
            if sample == REQUESTS:
                totals.requests += value
                status = tags.get("status", "")
                if status.startswith("5") or status in BAD_STATUS:
                    totals.bad += value
            else:
                le = float(tags["le"])
                totals.buckets[le] = totals.buckets.get(le, 0.0) + value
    return out


def latency_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile in seconds from cumulative buckets (histogram_quantile's interpolation); None if empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]  # the +Inf bucket: every request
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bound: its value, as Prometheus answers
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return None


def window_stats(before: Totals, after: Totals, seconds: float) -> WindowStats:
    delta = after.minus(before)
    p50, p95 = latency_quantile(0.5, delta.buckets), latency_quantile(0.95, delta.buckets)
    return WindowStats(
        rps=delta.requests / seconds if seconds > 0 else 0.0,
        error_rate=delta.bad / delta.requests if delta.requests > 0 else None,
        p50_ms=p50 * 1000 if p50 is not None else None,
        p95_ms=p95 * 1000 if p95 is not None else None,
    )


def slo_compliance(totals: Totals, availability: float | None, latency: Mapping[str, tuple[float, float]]) -> dict:
    """Each objective's achieved share and error budget left (1 untouched, 0 spent, negative missed) over `totals`.
    `availability`: percent; `latency`: {quantile: (share within, bound s)} (SloSpec.latency_targets)."""
    out: dict[str, dict[str, float | None]] = {}
    if totals.requests <= 0:
        return out
    objectives: list[tuple[str, float, float]] = []  # (name, objective share, bad share)
    if availability is not None:
        objectives.append(("availability", availability / 100, totals.bad / totals.requests))
    for quantile, (share, bound) in latency.items():
        within = totals.buckets.get(bound)
        bad = None if within is None else 1 - within / totals.requests
        objectives.append((f"latency_{quantile}", share, bad if bad is not None else math.nan))
    for name, objective, bad in objectives:
        if math.isnan(bad):
            out[name] = {"objective": objective, "achieved": None, "budget_left": None}
            continue
        out[name] = {"objective": objective, "achieved": 1 - bad, "budget_left": 1 - bad / (1 - objective)}
    return out
