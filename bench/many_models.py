"""Many models: 1,000 per-merchant fraud models as one multiplexed family on two replicas, under Zipf traffic.

The family (bench/many_models.yaml) is Ray Serve's model multiplexing: each replica keeps at most
`max_models_per_replica` models loaded and evicts the least recently used; Serve routes a model id to a replica
that has it. Closed-loop Locust users (loadtests/) each send one transaction at a time to a model id drawn from a
Zipf(1.1) distribution over the 1,000 ids, as traffic to per-customer models is skewed.

What it reports, all from the same run:
- latency p50/p95/p99 over the whole run, and for hits and misses apart: a request is a miss when a replica
  finished loading its model while it was in flight (the replica's log says when and how long each load took);
- the hit ratio (1 - loads / requests) against what one LRU cache of the family's whole capacity
  (replicas x max_models_per_replica) achieves on the same sequence of model ids (simulated);
- load latency, requests/s, and each replica's CPU (how evenly Serve spread the family over the replicas) and
  resident memory at the start, half-way, at its peak and at the end (a bounded cache holds it flat once full).

It runs twice, one server after the other: with modelfleet's default `eviction: frequency` (unload the model
asked for least lately, serve_apps/eviction.py) and with Ray Serve's own LRU (`eviction: lru`).

    python -m bench.many_models [--merchants 1000] [--users 16] [--duration 60] [--eviction frequency,lru]
"""

from __future__ import annotations

import loadtests.generator  # noqa: F401  (first: Locust's gevent patches the standard library)

# isort: split
import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from examples.fraud.data import merchant_ids
from groundwork.processes import free_port
from loadtests.generator import generate
from loadtests.measure import Measurements, summarize
from loadtests.records import RunRecord
from loadtests.scenario import from_app
from loadtests.shapes import Shape, stages
from serve_apps.spec import AppSpec, ModelSpec, load_app_spec

from ._cache_trace import Load, Request, lru_hit_ratio, misses, parse_loads
from ._harness import (
    REPO,
    CpuSampler,
    Server,
    Target,
    console,
    exit_on_failure,
    interrupt_on_signals,
    print_table,
    spec_variant,
    write_results,
)
from ._load import run_config

SPEC = REPO / "bench" / "many_models.yaml"
ARTIFACTS = REPO / "bench" / "results" / "many_models" / "artifacts"
RAY_SERVE_LOGS = Path("/tmp/ray/session_latest/logs/serve")
REPLICA_TITLE = "ray::ServeReplica:many_models:merchant"
GOAL_P99_OVER_P50 = 3.0


@dataclass
class Split:
    """Latency of one kind of request (all, hits, misses)."""

    requests: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None

    @classmethod
    def of(cls, ms: Sequence[float]) -> Split:
        if not ms:
            return cls()
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return cls(len(ms), round(float(p50), 2), round(float(p95), 2), round(float(p99), 2))


@dataclass
class ReplicaUse:
    """One replica's CPU over the run (how evenly Serve spread the family) and its resident memory."""

    pid: int
    cores: float
    start_mb: float
    mid_mb: float  # half-way through the run: a bounded cache is full by then, and the end is no higher
    peak_mb: float
    end_mb: float


@dataclass
class Result:
    eviction: str
    merchants: int  # distinct model ids asked for
    replicas: int
    capacity_per_replica: int
    users: int
    duration_s: float
    rps: float
    failures: int
    overall: Split
    hits: Split
    misses: Split
    loads: int
    load_p50_ms: float | None
    load_p95_ms: float | None
    hit_ratio: float
    lru_hit_ratio: float
    replicas_use: list[ReplicaUse] = field(default_factory=list)


def _replica_pids(server: Server) -> list[int]:
    pids = []
    for process in server.processes():
        try:
            title = process.cmdline()[0] if process.cmdline() else ""
        except psutil.Error:
            continue
        if title.split(".", 1)[0] == REPLICA_TITLE:  # while a replica runs a call, Ray appends the method's name
            pids.append(process.pid)
    return sorted(pids)


def _use(sampler: CpuSampler, pids: list[int]) -> list[ReplicaUse]:
    rows = []
    cores = sampler.cores()
    for pid in pids:
        series = [row[pid] for _, row in sampler.rss_mb if pid in row]
        if series:
            mid = series[len(series) // 2]
            rows.append(
                ReplicaUse(
                    pid,
                    round(cores.get(str(pid), 0.0), 2),
                    round(series[0], 1),
                    round(mid, 1),
                    round(max(series), 1),
                    round(series[-1], 1),
                )
            )
    return rows


def _requests(measured: Measurements, paths: list[str]) -> list[Request]:
    ids = [path.split("/v2/models/", 1)[1].split("/", 1)[0].split(":", 1)[1] for path in paths]
    return [
        Request(ids[path], ended - ms / 1000, ended, ms, kind is None) for ended, ms, _, kind, path in measured.samples
    ]


def run(
    server: Server, spec: AppSpec, merchants: int, users: int, duration_s: float
) -> tuple[RunRecord, list[Request], list[ReplicaUse]]:
    scenario = from_app(spec, server.url, model_ids={"merchant": merchant_ids(merchants)})
    plan = stages(Shape.constant, users, duration_s)
    config = run_config(scenario, plan, app=spec.name)
    pids = _replica_pids(server)
    with CpuSampler({pid: str(pid) for pid in pids}) as sampler:
        measured = generate(scenario, plan)
    return summarize(measured, plan, config), _requests(measured, scenario.endpoints[0].paths), _use(sampler, pids)


def analyse(
    family: ModelSpec, record: RunRecord, requests: list[Request], loads: list[Load], use: list[ReplicaUse], users: int
) -> Result:
    replicas = family.autoscaling.max_replicas
    capacity = family.multiplex.max_models_per_replica
    first = min(r.started for r in requests)
    last = max(r.ended for r in requests)
    during = [load for load in loads if first <= load.ended <= last + 1.0]
    answered = [r for r in requests if r.ok]
    missed = misses(answered, during)
    load_ms = [load.seconds * 1000 for load in during]
    trace = [r.model_id for r in sorted(requests, key=lambda r: r.started)]
    return Result(
        eviction=family.multiplex.eviction,
        merchants=len(set(trace)),
        replicas=replicas,
        capacity_per_replica=capacity,
        users=users,
        duration_s=record.duration_s,
        rps=record.rps,
        failures=record.failures,
        overall=Split.of([r.ms for r in answered]),
        hits=Split.of([r.ms for r, miss in zip(answered, missed, strict=True) if not miss]),
        misses=Split.of([r.ms for r, miss in zip(answered, missed, strict=True) if miss]),
        loads=len(during),
        load_p50_ms=round(float(np.percentile(load_ms, 50)), 2) if load_ms else None,
        load_p95_ms=round(float(np.percentile(load_ms, 95)), 2) if load_ms else None,
        hit_ratio=round(1 - len(during) / len(answered), 3) if answered else 0.0,
        lru_hit_ratio=round(lru_hit_ratio(trace, replicas * capacity), 3),
        replicas_use=use,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(results: list[Result], merchants: int) -> None:
    first = results[0]
    print_table(
        f"{merchants} merchant models, {first.replicas} replicas x {first.capacity_per_replica} loaded, "
        f"{first.users} users, Zipf(1.1), {first.duration_s:.0f} s per side",
        ["eviction", "requests", "req/s", "failed", "p50 ms", "p95 ms", "p99 ms", "p99/p50"],
        [
            [
                r.eviction,
                str(r.overall.requests),
                f"{r.rps:.0f}",
                str(r.failures),
                _ms(r.overall.p50_ms),
                _ms(r.overall.p95_ms),
                _ms(r.overall.p99_ms),
                f"{r.overall.p99_ms / r.overall.p50_ms:.2f}" if r.overall.p50_ms and r.overall.p99_ms else "-",
            ]
            for r in results
        ],
    )
    print_table(
        "hits and misses (a miss waited for its model to load)",
        ["eviction", "hit ratio", "one LRU, same trace", "hits p50/p99 ms", "misses p50/p99 ms", "load p50/p95 ms"],
        [
            [
                r.eviction,
                f"{r.hit_ratio:.3f}",
                f"{r.lru_hit_ratio:.3f}",
                f"{_ms(r.hits.p50_ms)} / {_ms(r.hits.p99_ms)}",
                f"{_ms(r.misses.p50_ms)} / {_ms(r.misses.p99_ms)}",
                f"{_ms(r.load_p50_ms)} / {_ms(r.load_p95_ms)}",
            ]
            for r in results
        ],
    )
    print_table(
        "each replica: CPU over the run, and resident memory (MB)",
        ["eviction", "replica pid", "cores", "start MB", "half-way MB", "peak MB", "end MB"],
        [
            [r.eviction, str(u.pid), f"{u.cores:.2f}"]
            + [f"{u.start_mb:.0f}", f"{u.mid_mb:.0f}", f"{u.peak_mb:.0f}", f"{u.end_mb:.0f}"]
            for r in results
            for u in r.replicas_use
        ],
    )
    for r in results:
        p50, p99 = r.overall.p50_ms, r.overall.p99_ms
        tail = "met" if p50 and p99 and p99 <= GOAL_P99_OVER_P50 * p50 else "missed"
        hits = "met" if r.hit_ratio >= r.lru_hit_ratio else "missed"
        console.print(
            f"{r.eviction}: p99 ≤ {GOAL_P99_OVER_P50:.0f}x p50 {tail}; hit ratio ≥ one LRU's on the same trace {hits}"
        )


def _spec_for(eviction: str) -> Path:
    """bench/many_models.yaml, or a copy of it unloading by `eviction`."""
    if eviction == load_app_spec(SPEC).model("merchant").multiplex.eviction:
        return SPEC

    def evict_by(spec: dict) -> None:
        spec["models"][0]["multiplex"]["eviction"] = eviction

    return spec_variant(SPEC, ARTIFACTS.parent / f"many_models_{eviction}.yaml", evict_by)


def measure_side(eviction: str, merchants: int, users: int, duration_s: float) -> Result:
    spec_path = _spec_for(eviction)
    spec = load_app_spec(spec_path)
    port = free_port()
    target = Target(
        f"many-models-{eviction}",
        [sys.executable, "-m", "modelfleet", "run", str(spec_path), "--host", "127.0.0.1", "--port", str(port)],
        port,
    )
    console.print(f"[bold]eviction: {eviction}[/bold]: {users} users for {duration_s:.0f} s")
    with Server(target) as server:
        server.settle()
        record, requests, use = run(server, spec, merchants, users, duration_s)
        time.sleep(1.0)  # the replicas' last log lines flushed
        logs = sorted(RAY_SERVE_LOGS.glob("replica_many_models_merchant_*.log"))
        lines = (line for log in logs for line in log.read_text(errors="replace").splitlines())
        loads = parse_loads(lines, "merchant")
    return analyse(spec.model("merchant"), record, requests, loads, use, users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--merchants", type=int, default=1000, help="Models in the family (trained once, cached).")
    parser.add_argument("--users", type=int, default=16, help="Closed-loop users, one request in flight each.")
    parser.add_argument("--duration", type=float, default=60, help="Seconds of load per side.")
    parser.add_argument(
        "--eviction", default="frequency,lru", help="Sides to run, comma-separated: frequency (ours), lru (Serve's)."
    )
    args = parser.parse_args()
    interrupt_on_signals()
    from examples.fraud.train import ensure_trained

    ensure_trained(ARTIFACTS, merchants=args.merchants)
    with exit_on_failure():
        results = [
            measure_side(eviction, args.merchants, args.users, args.duration) for eviction in args.eviction.split(",")
        ]
    report(results, args.merchants)
    path = write_results(
        "many_models", {"command": " ".join(["python -m bench.many_models", *sys.argv[1:]]), "results": results}
    )
    console.print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
