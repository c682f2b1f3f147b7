"""One load run against a benchmark's target: `modelfleet loadtest`'s own run, with the target's CPU per role.

Every target, baselines included, is measured by `loadtests.measured_run.measure_run`,
so a benchmark's p50/p95/p99 come from every request's own latency, as in
`modelfleet loadtest`'s summary.json. Importing this module imports Locust,
whose gevent patches the process: import it first, and never next to Ray (the
targets run as subprocesses).
"""

from __future__ import annotations

import loadtests.generator  # noqa: F401  (first: Locust's gevent patches the standard library)

# isort: split
from dataclasses import dataclass
from datetime import UTC, datetime

from loadtests.measure import STAGE_SETTLE_S
from loadtests.measured_run import measure_run
from loadtests.records import RunConfig, RunRecord
from loadtests.scenario import Scenario
from loadtests.shapes import Shape, Stage, stages

from ._harness import CpuSampler, Server


@dataclass
class LoadRun:
    record: RunRecord  # the generator's side, as `modelfleet loadtest` records it
    server_cpu_cores: dict[str, float]  # mean cores per role of the target's processes (its start-up second left out)


def run_config(scenario: Scenario, plan: list[Stage], app: str | None = None, shape: str = "constant") -> RunConfig:
    """What a run asks for, as `modelfleet loadtest` records it: its most users, their spawn rate, its length."""
    busiest = max(plan, key=lambda stage: stage.users)
    return RunConfig(
        url=scenario.base_url,
        app=app,
        shape=shape,
        users=busiest.users,
        spawn_rate=busiest.spawn_rate,
        duration_s=plan[-1].until_s,
        protocol=scenario.protocol,
        rows_per_request=scenario.rows_per_request,
        endpoints={e.name: e.weight for e in scenario.endpoints},
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def run_load(
    server: Server, scenario: Scenario, users: int, duration_s: float, sample_interval_s: float = 1.0
) -> LoadRun:
    """`users` closed-loop users, all started at once, for `duration_s`; the target's processes sampled meanwhile."""
    plan = stages(Shape.constant, users, duration_s)
    config = run_config(scenario, plan)
    with CpuSampler(server.roles(), sample_interval_s) as sampler:
        record = measure_run(scenario, plan, config)
    use = sampler.cores(skip_s=STAGE_SETTLE_S, until_s=duration_s)
    return LoadRun(record, {role: round(cores, 2) for role, cores in use.items() if cores >= 0.01})
