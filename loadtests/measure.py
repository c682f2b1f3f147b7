"""Raw measurements -> records: percentiles, per-second timeline, per-stage and per-endpoint results.

Pure functions over the samples the generator kept; nothing here sends a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .records import EndpointResult, ResourcePoint, RunConfig, RunRecord, StageResult, TimePoint
from .shapes import Stage

__all__ = ["Measurements", "STAGE_SETTLE_S", "stage_results", "summarize"]

# A stage's first second is its users starting (or stopping): measured apart from its steady state.
STAGE_SETTLE_S = 1.0
# A generator busier than this (in cores) measures itself more than the target.
SATURATED_CORES = 0.9


@dataclass
class Measurements:
    """Raw results of one run: every request, and once a second the users and the CPU in use."""

    started: float  # wall clock when the first stage began
    endpoint_names: list[str]
    samples: list[tuple[float, float, int, bool]] = field(
        default_factory=list
    )  # (end time, ms, endpoint index, failed)
    users: list[tuple[float, int]] = field(default_factory=list)  # (t_s, users)
    # (t_s, server cores, server MB, generator cores); server figures are None when it runs elsewhere.
    resources: list[tuple[float, float | None, float | None, float]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # Locust's "endpoint: message" -> count


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def _latencies(ms: np.ndarray, failed: np.ndarray, seconds: float) -> dict:
    if not len(ms):
        return {"requests": 0, "failures": 0, "rps": 0.0}
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {
        "requests": int(len(ms)),
        "failures": int(failed.sum()),
        "rps": round(len(ms) / max(seconds, 1e-9), 2),
        "p50_ms": _round(p50),
        "p90_ms": _round(p90),
        "p95_ms": _round(p95),
        "p99_ms": _round(p99),
        "mean_ms": _round(ms.mean()),
        "max_ms": _round(ms.max()),
    }


def _arrays(measured: Measurements) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not measured.samples:
        empty = np.zeros(0)
        return empty, empty, empty.astype(int), empty.astype(bool)
    ends, ms, endpoint, failed = map(np.asarray, zip(*measured.samples, strict=True))
    return ends - measured.started, ms.astype(float), endpoint.astype(int), failed.astype(bool)


def _timeline(t: np.ndarray, ms: np.ndarray, failed: np.ndarray, users: list[tuple[float, int]]) -> list[TimePoint]:
    points = []
    for second in range(int(np.ceil(t.max())) if len(t) else 0):
        window = (t >= second) & (t < second + 1)
        users_then = next((u for s, u in users if s >= second + 1), users[-1][1] if users else 0)
        p50, p95, p99 = np.percentile(ms[window], [50, 95, 99]) if window.any() else (None, None, None)
        points.append(
            TimePoint(
                t_s=second + 1,
                users=users_then,
                rps=float(window.sum()),
                failures_per_s=float(failed[window].sum()),
                p50_ms=_round(p50),
                p95_ms=_round(p95),
                p99_ms=_round(p99),
            )
        )
    return points


def stage_results(t: np.ndarray, ms: np.ndarray, failed: np.ndarray, stages: list[Stage]) -> list[StageResult]:
    results, start = [], 0.0
    for stage in stages:
        settled = start + min(STAGE_SETTLE_S, (stage.until_s - start) / 4)
        window = (t >= settled) & (t < stage.until_s)
        results.append(
            StageResult(
                users=stage.users,
                start_s=start,
                end_s=stage.until_s,
                **_latencies(ms[window], failed[window], stage.until_s - settled),
            )
        )
        start = stage.until_s
    return results


def summarize(measured: Measurements, stages: list[Stage], config: RunConfig) -> RunRecord:
    """Every figure of the run, from the generator's side; the server's side is added by the caller."""
    t, ms, endpoint, failed = _arrays(measured)
    starts = t - ms / 1000.0
    duration = float(t.max() - starts.min()) if len(t) else 0.0
    endpoints = [
        EndpointResult(name=name, **_latencies(ms[endpoint == i], failed[endpoint == i], duration))
        for i, name in enumerate(measured.endpoint_names)
    ]
    resources = [
        ResourcePoint(
            t_s=round(s, 2), server_cpu_cores=_round(c), server_memory_mb=_round(m, 1), generator_cpu_cores=round(g, 2)
        )
        for s, c, m, g in measured.resources
    ]
    busy = [
        r for r in resources[1:-1] if r.generator_cpu_cores is not None
    ]  # first and last seconds are start-up and wind-down
    generator = float(np.mean([r.generator_cpu_cores for r in busy])) if busy else 0.0
    server = [r.server_cpu_cores for r in busy if r.server_cpu_cores is not None]
    memory = [r.server_memory_mb for r in resources if r.server_memory_mb is not None]
    warnings = []
    if generator > SATURATED_CORES and config.workers == 0:
        warnings.append(
            f"the load generator used {generator:.2f} cores on average: it may be the bottleneck, not the server; "
            "try --workers 2 on a machine with cores to spare, or a generator on another machine"
        )
    if failed.any():
        warnings.append(f"{int(failed.sum())} of {len(failed)} requests failed; see the errors table")
    return RunRecord(
        config=config,
        duration_s=round(duration, 2),
        **_latencies(ms, failed, duration),
        errors=dict(sorted(measured.errors.items(), key=lambda kv: -kv[1])),
        endpoints=endpoints,
        stages=stage_results(t, ms, failed, stages),
        timeline=_timeline(t, ms, failed, measured.users),
        resources=resources,
        generator_cpu_cores=round(generator, 2),
        server_cpu_cores=_round(float(np.mean(server))) if server else None,
        server_memory_mb=_round(max(memory), 1) if memory else None,
        warnings=warnings,
    )
