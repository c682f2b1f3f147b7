"""The benchmarks' analysis of a run, without a run: bench.many_models's LRU simulation, log parsing, hits and
misses; bench.autoscale's recovery, replica-seconds and release."""

from __future__ import annotations

import time
from datetime import datetime

from bench._autoscale_analysis import recovery_s, release_s, replica_seconds
from bench._cache_trace import Load, Request, lru_hit_ratio, misses, parse_loads
from loadtests.records import ReplicaPoint, TimePoint


def test_lru_hits_what_it_still_holds() -> None:
    # capacity 2: a b a (hit) c (evicts b) b (miss, evicts a) a (miss) c (miss: evicted by a)
    assert lru_hit_ratio(list("abacbac"), 2) == 1 / 7
    assert lru_hit_ratio(list("abab"), 2) == 0.5
    assert lru_hit_ratio([], 2) == 0.0


def test_a_replica_log_line_becomes_a_load_of_its_model() -> None:
    lines = [
        "\x1b[36m(ServeReplica:many_models:merchant pid=1)\x1b[0m INFO 2026-12-04 12:25:09,420 many_models_merchant "
        "abc 7f1e -- model merchant:m042 v1 loaded on cpu in 0.004s",
        "INFO 2026-12-04 12:25:10,001 x y -- model other:m001 v1 loaded on cpu in 0.100s",  # another family
        "INFO 2026-12-04 12:25:10,002 x y -- model digits v1 loaded on cpu in 0.100s",  # not a family
    ]
    (load,) = parse_loads(lines, "merchant")
    expected = time.mktime(datetime(2026, 12, 4, 12, 25, 9).timetuple()) + 0.42
    assert load.model_id == "m042" and load.seconds == 0.004 and abs(load.ended - expected) < 1e-6


def test_a_request_missed_when_its_model_finished_loading_while_it_waited() -> None:
    loads = [Load("m1", ended=10.050, seconds=0.01)]
    requests = [
        Request("m1", started=10.000, ended=10.060, ms=60, ok=True),  # waited for the load: a miss
        Request("m1", started=10.070, ended=10.080, ms=10, ok=True),  # after it: a hit
        Request("m2", started=10.000, ended=10.060, ms=60, ok=True),  # another model's load: a hit
        Request("m1", started=9.900, ended=9.950, ms=50, ok=True),  # before it: a hit
    ]
    assert misses(requests, loads) == [True, False, False, False]


def _seconds(p95s: list[float | None], first_t: int = 1) -> list[TimePoint]:
    return [
        TimePoint(t_s=first_t + i, users=32, rps=100.0, failures_per_s=0.0, p95_ms=p95) for i, p95 in enumerate(p95s)
    ]


def test_recovery_is_the_start_of_the_first_stretch_within_the_slo() -> None:
    # The step at 10 s; seconds ending at 11..22. Within SLO (50 ms) from the second ending at 15 on, but one
    # blip at 17 restarts the stretch: five in a row first from the second that ended at 18 (began at 17).
    p95s = [200, 180, 90, 70, 40, 45, 60, 40, 40, 41, 42, 43]
    timeline = _seconds([None] * 10, first_t=1) + _seconds(p95s, first_t=11)
    assert recovery_s(timeline, 50, start_s=10, end_s=22) == 7
    assert recovery_s(timeline, 10, start_s=10, end_s=22) is None  # never within 10 ms
    assert recovery_s(_seconds([5] * 12, first_t=11), 50, start_s=10, end_s=22) == 0  # never left the SLO


def test_replica_seconds_hold_each_reading_until_the_next() -> None:
    points = [
        ReplicaPoint(t_s=-1.0, replicas={"digits": 1}),  # read before the run began: counts from 0
        ReplicaPoint(t_s=10.0, replicas={"digits": 3, "ingress": 1}),
        ReplicaPoint(t_s=20.0, replicas={"digits": 1}),
        ReplicaPoint(t_s=40.0, replicas={"digits": 5}),  # after the end: left out
    ]
    assert replica_seconds(points, "digits", end_s=30) == 1 * 10 + 3 * 10 + 1 * 10
    assert replica_seconds(points, "ingress", end_s=30) == 10


def test_release_is_when_the_count_is_back_at_its_floor() -> None:
    points = [ReplicaPoint(t_s=t, replicas={"digits": n}) for t, n in [(50, 4), (60, 4), (72.5, 2), (80, 1)]]
    assert release_s(points, "digits", floor=1, after_s=60) == 20
    assert release_s(points, "digits", floor=2, after_s=60) == 12.5
    assert release_s(points[:3], "digits", floor=1, after_s=60) is None  # still 2 at the end
    # At the floor when the load dropped, then up (the autoscaler caught up late), then down again: the last descent.
    late = [ReplicaPoint(t_s=t, replicas={"digits": n}) for t, n in [(60, 1), (63, 4), (90, 4), (92, 1), (95, 1)]]
    assert release_s(late, "digits", floor=1, after_s=60) == 32
    assert release_s(late[:1], "digits", floor=1, after_s=60) == 0
