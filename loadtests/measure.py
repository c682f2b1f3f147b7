"""Raw measurements -> records: percentiles, per-second timeline, per-stage and per-endpoint results.

Pure functions over the samples the generator kept; nothing here sends a request.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .records import EndpointResult, ResourcePoint, RunConfig, RunRecord, StageResult, TimePoint
from .shapes import Stage

__all__ = ["LiveTally", "Measurements", "Progress", "STAGE_SETTLE_S", "stage_results", "summarize", "whole_seconds"]

# A stage's first second is its users starting (or stopping): measured apart from its steady state.
STAGE_SETTLE_S = 1.0
# The live line's req/s and percentiles are over this many of the last seconds.
PROGRESS_WINDOW_S = 2.0
# A generator busier than this (in cores) measures itself more than the target.
SATURATED_CORES = 0.9


@dataclass
class Measurements:
    """Raw results of one run: every request, and once a second the users and the CPU in use."""

    started: float  # wall clock when the first stage began
    endpoint_names: list[str]
    # (end time, ms, endpoint index, failure kind or None when it succeeded, index of the endpoint's path)
    samples: list[tuple[float, float, int, str | None, int]] = field(default_factory=list)
    users: list[tuple[float, int]] = field(default_factory=list)  # (t_s, users)
    # (t_s, server cores, server MB, generator cores); server figures are None when it runs elsewhere.
    resources: list[tuple[float, float | None, float | None, float]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # Locust's "endpoint: message" -> count
    interrupted_at_s: float | None = None  # Ctrl-C ended the run this long after it started


@dataclass
class Progress:
    """What the live line shows, once a second: rates and percentiles of successful requests only."""

    elapsed_s: float
    total_s: float  # the last stage's end
    users: int
    rps: float  # successful requests per second, over the last PROGRESS_WINDOW_S
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    successes: int  # so far
    failures: dict[str, int]  # so far, kind -> count


class LiveTally:
    """Counts the samples as they arrive (the generator's list grows under it) for the live line."""

    def __init__(self, samples: list, total_s: float, lag_s: float = 0.0):
        self._samples, self._seen, self.total_s = samples, 0, total_s
        self._lag_s = lag_s  # samples from worker processes arrive with their reports, this late at most
        self._recent: list[tuple[float, float]] = []  # (end time, ms) of successes within the window
        self.successes = 0
        self.failures: Counter[str] = Counter()

    def progress(self, now: float, elapsed_s: float, users: int) -> Progress:
        new = self._samples[self._seen :]
        self._seen += len(new)
        for end, ms, _, failure, *_ in new:
            if failure is None:
                self.successes += 1
                self._recent.append((end, ms))
            else:
                self.failures[failure] += 1
        until = now - self._lag_s
        window_s = min(PROGRESS_WINDOW_S, elapsed_s - self._lag_s)  # at first, only what has elapsed
        self._recent = [(end, ms) for end, ms in self._recent if end >= until - PROGRESS_WINDOW_S]
        ms = np.array([ms for end, ms in self._recent if until - window_s <= end < until])
        p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if len(ms) else (None, None, None)
        return Progress(
            elapsed_s=elapsed_s,
            total_s=self.total_s,
            users=users,
            rps=len(ms) / window_s if window_s > 0 else 0.0,
            p50_ms=_round(p50),
            p95_ms=_round(p95),
            p99_ms=_round(p99),
            successes=self.successes,
            failures=dict(self.failures.most_common()),
        )


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def _failed(kinds: np.ndarray) -> np.ndarray:
    return np.array([kind is not None for kind in kinds], dtype=bool)


def _latencies(ms: np.ndarray, kinds: np.ndarray, seconds: float) -> dict:
    """Counts of every request; throughput and latencies of the successful ones only."""
    failed = _failed(kinds)
    ok = ms[~failed]
    counts = {
        "requests": int(len(ms)),
        "failures": int(failed.sum()),
        "failures_by_kind": dict(Counter(kinds[failed].tolist()).most_common()),
        "rps": round(len(ok) / max(seconds, 1e-9), 2),
    }
    if not len(ok):
        return counts
    p50, p90, p95, p99 = np.percentile(ok, [50, 90, 95, 99])
    return counts | {
        "p50_ms": _round(p50),
        "p90_ms": _round(p90),
        "p95_ms": _round(p95),
        "p99_ms": _round(p99),
        "mean_ms": _round(ok.mean()),
        "max_ms": _round(ok.max()),
    }


def _arrays(measured: Measurements) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t_s of each answer, ms, endpoint index, failure kind or None)."""
    if not measured.samples:
        empty = np.zeros(0)
        return empty, empty, empty.astype(int), empty.astype(object)
    ends, ms, endpoint, kinds = list(zip(*measured.samples, strict=True))[:4]
    kinds_array = np.empty(len(kinds), dtype=object)
    kinds_array[:] = kinds
    return (
        np.asarray(ends) - measured.started,
        np.asarray(ms, dtype=float),
        np.asarray(endpoint, dtype=int),
        kinds_array,
    )


def whole_seconds(stages: list[Stage]) -> int:
    """The run's whole seconds: the load stops at the last stage's end; answers after it are in-flight stragglers."""
    return int(stages[-1].until_s + 1e-6)


def _timeline(
    t: np.ndarray, ms: np.ndarray, kinds: np.ndarray, users: list[tuple[float, int]], seconds: int
) -> list[TimePoint]:
    failed = _failed(kinds)
    points = []
    for second in range(seconds):
        window = (t >= second) & (t < second + 1)
        ok = window & ~failed
        users_then = next((u for s, u in users if s >= second + 1), users[-1][1] if users else 0)
        p50, p95, p99 = np.percentile(ms[ok], [50, 95, 99]) if ok.any() else (None, None, None)
        points.append(
            TimePoint(
                t_s=second + 1,
                users=users_then,
                rps=float(ok.sum()),
                failures_per_s=float((window & failed).sum()),
                p50_ms=_round(p50),
                p95_ms=_round(p95),
                p99_ms=_round(p99),
            )
        )
    return points


def stage_results(t: np.ndarray, ms: np.ndarray, kinds: np.ndarray, stages: list[Stage]) -> list[StageResult]:
    """Each stage's requests, its settle second included, so that the stages add up to the run; its rps and
    percentiles from the settled window."""
    results, start = [], 0.0
    for i, stage in enumerate(stages):
        settled = start + min(STAGE_SETTLE_S, (stage.until_s - start) / 4)
        steady = (t >= settled) & (t < stage.until_s)
        # The first stage takes anything before the start, the last every answer after its end.
        whole = (t >= (start if i else -np.inf)) & (t < (stage.until_s if i < len(stages) - 1 else np.inf))
        counted = _latencies(ms[whole], kinds[whole], stage.until_s - start)
        rates = _latencies(ms[steady], kinds[steady], stage.until_s - settled)
        results.append(
            StageResult(
                users=stage.users,
                start_s=start,
                end_s=stage.until_s,
                settled_s=round(settled, 3),
                **(rates | {key: counted[key] for key in ("requests", "failures", "failures_by_kind")}),
            )
        )
        start = stage.until_s
    return results


def summarize(measured: Measurements, stages: list[Stage], config: RunConfig) -> RunRecord:
    """Every figure of the run, from the generator's side; the server's side is added by the caller."""
    t, ms, endpoint, kinds = _arrays(measured)
    starts = t - ms / 1000.0
    duration = float(t.max() - starts.min()) if len(t) else 0.0
    endpoints = [
        EndpointResult(name=name, **_latencies(ms[endpoint == i], kinds[endpoint == i], duration))
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
    totals = _latencies(ms, kinds, duration)
    if totals["failures"]:
        kinds_text = ", ".join(f"{kind}: {count}" for kind, count in totals["failures_by_kind"].items())
        warnings.append(
            f"{totals['failures']} of {totals['requests']} requests failed ({kinds_text}); throughput and latency "
            "count the successful ones only; see the errors table"
        )
    return RunRecord(
        config=config,
        duration_s=round(duration, 2),
        **totals,
        errors=dict(sorted(measured.errors.items(), key=lambda kv: -kv[1])),
        interrupted_at_s=measured.interrupted_at_s,
        endpoints=endpoints,
        stages=stage_results(t, ms, kinds, stages),
        timeline=_timeline(t, ms, kinds, measured.users, whole_seconds(stages)),
        resources=resources,
        generator_cpu_cores=round(generator, 2),
        server_cpu_cores=_round(float(np.mean(server))) if server else None,
        server_memory_mb=_round(max(memory), 1) if memory else None,
        warnings=warnings,
    )
