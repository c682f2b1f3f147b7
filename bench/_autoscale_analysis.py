"""What bench.autoscale makes of a run's timeline: recovery after the step up, replica-seconds, release after the
step down. Pure functions over loadtests' records, tested in tests/test_bench_analysis.py."""

from __future__ import annotations

from loadtests.records import ReplicaPoint, TimePoint

__all__ = ["STAYS_WITHIN_S", "recovery_s", "release_s", "replica_seconds"]

STAYS_WITHIN_S = 5  # p95 back within the SLO means: for this many whole seconds in a row


def recovery_s(timeline: list[TimePoint], slo_ms: float, start_s: float, end_s: float) -> float | None:
    """Seconds after `start_s` until the first of STAYS_WITHIN_S whole seconds in a row with p95 within the SLO.

    A second is point t_s = the second that ended then; None if the stage never had such a stretch.
    """
    seconds = [p for p in timeline if start_s < p.t_s <= end_s]
    for i in range(len(seconds) - STAYS_WITHIN_S + 1):
        stretch = seconds[i : i + STAYS_WITHIN_S]
        if all(p.p95_ms is not None and p.p95_ms <= slo_ms for p in stretch):
            return stretch[0].t_s - 1 - start_s
    return None


def replica_seconds(points: list[ReplicaPoint], deployment: str, end_s: float) -> float:
    """The area under the deployment's running-replica count over [0, end_s] (each reading holds until the next)."""
    total = 0.0
    readings = [p for p in points if p.t_s < end_s]
    for point, following in zip(readings, [*readings[1:], None], strict=True):
        start = max(point.t_s, 0.0)
        until = following.t_s if following else end_s
        total += max(0.0, until - start) * point.replicas.get(deployment, 0)
    return total


def release_s(points: list[ReplicaPoint], deployment: str, floor: int, after_s: float) -> float | None:
    """Seconds after `after_s` until the deployment's running replicas were back at `floor` for good: the first
    reading after the last one above it (0: never above it after `after_s`; None: still above it at the end)."""
    later = [p for p in points if p.t_s >= after_s]
    above = [i for i, p in enumerate(later) if p.replicas.get(deployment, 0) > floor]
    if not above:
        return 0.0
    if above[-1] == len(later) - 1:
        return None
    return later[above[-1] + 1].t_s - after_s
