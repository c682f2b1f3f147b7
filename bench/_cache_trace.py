"""What bench.many_models makes of a run: which requests waited for a load, and what one LRU would have hit.

Pure functions over the generator's requests and the replicas' log lines, tested in tests/test_bench_analysis.py.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

__all__ = ["Load", "Request", "lru_hit_ratio", "misses", "parse_loads"]

# A replica's log line for each model it loads (serve_apps/deployment.py): when it finished and how long it took.
LOADED = re.compile(
    r"(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .* -- model (?P<family>[^:\s]+):(?P<id>\S+) v\S+ loaded on \S+ "
    r"in (?P<seconds>[\d.]+)s"
)


@dataclass(frozen=True)
class Load:
    model_id: str
    ended: float  # wall clock
    seconds: float


@dataclass(frozen=True)
class Request:
    model_id: str
    started: float  # wall clock
    ended: float
    ms: float
    ok: bool


def lru_hit_ratio(trace: Iterable[str], capacity: int) -> float:
    """The share of `trace` one LRU cache of `capacity` entries would have answered without loading."""
    cache: OrderedDict[str, None] = OrderedDict()
    hits = total = 0
    for key in trace:
        total += 1
        if key in cache:
            hits += 1
            cache.move_to_end(key)
            continue
        cache[key] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return hits / total if total else 0.0


def parse_loads(lines: Iterable[str], family: str) -> list[Load]:
    """The loads of `family`'s models a replica logged (its log's times are local time, as Ray writes them)."""
    loads = []
    for line in lines:
        found = LOADED.search(line)
        if found and found["family"] == family:
            at = datetime.strptime(found["at"], "%Y-%m-%d %H:%M:%S,%f")
            loads.append(Load(found["id"], time.mktime(at.timetuple()) + at.microsecond / 1e6, float(found["seconds"])))
    return loads


def misses(requests: Sequence[Request], loads: Sequence[Load], slack_s: float = 0.002) -> list[bool]:
    """For each request, whether a load of its model ended while it was in flight (it waited for the load).

    `slack_s`: the log's clock has millisecond steps and the generator stamps a request's end just after it.
    """
    ends_by_id: dict[str, list[float]] = {}
    for load in loads:
        ends_by_id.setdefault(load.model_id, []).append(load.ended)
    for ends in ends_by_id.values():
        ends.sort()
    missed = []
    for request in requests:
        ends = ends_by_id.get(request.model_id, [])
        i = int(np.searchsorted(ends, request.started - slack_s))
        missed.append(i < len(ends) and ends[i] <= request.ended + slack_s)
    return missed
