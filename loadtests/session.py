"""One measured run: the generator's numbers, joined with what the server saw (counts, batch sizes, replicas, CPU).

Used by `modelfleet loadtest` for one run and by the tuner for each trial.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from serve_apps.spec import AppSpec

from .generator import Progress, generate
from .measure import summarize
from .records import ModelKnobs, RunConfig, RunRecord, Trial, TuneRecord
from .scenario import Scenario
from .server import AppProcess
from .server_side import ReplicaWatcher, ServerCounts, scrape
from .shapes import Stage, doubling, sweep
from .tuner import Space, apply_knobs, baseline_knobs, best_point, search, tuned_spec_yaml, verdict

__all__ = ["COUNT_TOLERANCE", "TuneOutcome", "measure_run", "tune"]

# The generator's request count and the server's may differ by requests in flight at either end of the run.
COUNT_TOLERANCE = 0.05


def measure_run(
    scenario: Scenario,
    stages: list[Stage],
    config: RunConfig,
    *,
    app: AppProcess | None = None,
    ingress_replicas: int = 1,
    workers: int = 0,
    report_dir: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunRecord:
    before = scrape(scenario.base_url, scenario.headers, ingress_replicas)
    with tempfile.TemporaryDirectory(prefix="modelfleet-replicas-") as scratch:
        watcher = None
        if app is not None and app.ray_address and config.app:
            watcher = ReplicaWatcher(app.ray_address, config.app, Path(scratch) / "replicas.jsonl")
            watcher.wait_first()
        started = None
        try:
            measured = generate(
                scenario,
                stages,
                workers=workers,
                csv_prefix=report_dir / "locust" if report_dir else None,
                server=app.group if app else None,
                on_progress=on_progress,
            )
            started = measured.started
        finally:
            replicas = watcher.stop(started or 0.0) if watcher else []
    after = scrape(scenario.base_url, scenario.headers, ingress_replicas)
    record = summarize(measured, stages, config)
    record.replicas = replicas
    if before is not None and after is not None:
        _add_server_counts(record, scenario, after - before)
    return record


def _add_server_counts(record: RunRecord, scenario: Scenario, seen: ServerCounts) -> None:
    """Per endpoint, what the ingress counted for its model; a mismatch with the generator's count is a warning."""
    for result, endpoint in zip(record.endpoints, scenario.endpoints, strict=True):
        if endpoint.model is not None and endpoint.model in seen.requests:
            result.server_requests = int(seen.requests[endpoint.model])
            result.mean_batch_rows = seen.mean_batch_rows(endpoint.model)
    counted = [r.server_requests for r in record.endpoints if r.server_requests is not None]
    if len(counted) != len(record.endpoints):
        return  # an endpoint the ingress does not count (not a modelfleet model): no total to compare
    record.server_requests = sum(counted)
    if abs(record.server_requests - record.requests) > COUNT_TOLERANCE * max(record.requests, 1):
        record.warnings.append(
            f"the server counted {record.server_requests} requests and the generator {record.requests}: "
            "other traffic reached these models during the run, or requests were lost"
        )


@dataclass
class TuneOutcome:
    record: TuneRecord
    runs: dict[int, RunRecord]  # trial number -> its sweep, as a run
    tuned_yaml: str | None


def _deploy(spec_file: Path, ray_address: str, log: Path) -> str | None:
    """`modelfleet deploy` onto the run's Ray (a rolling update; a failed one leaves the previous version serving)."""
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "deploy", str(spec_file), "--address", ray_address, "--timeout-s", "300"],
        capture_output=True,
        text=True,
        timeout=420,
        stdin=subprocess.DEVNULL,
    )
    with log.open("a") as sink:
        sink.write(f"$ modelfleet deploy {spec_file}\n{result.stdout}{result.stderr}\n")
    if result.returncode == 0:
        return None
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"modelfleet deploy exited {result.returncode}"


def tune(
    spec: AppSpec,
    app: AppProcess,
    scenario: Scenario,
    space: Space,
    *,
    slo_p95_ms: float,
    max_trials: int,
    max_users: int,
    trial_s: float,
    work_dir: Path,
    seed: int = 0,
    proposals: Generator[dict[str, ModelKnobs], Trial, str] | None = None,
    fresh_app: bool = True,
    on_trial: Callable[[Trial], None] | None = None,
    on_progress: Callable[[Trial, Progress], None] | None = None,
) -> TuneOutcome:
    """Measure the spec's own configuration, then what the search proposes, each swept over user counts.

    `proposals` replaces the search (bench/ passes an exhaustive grid); `fresh_app` says the app still
    runs the spec as started, so the baseline needs no deploy.
    """
    models = list(space.models)
    baseline = baseline_knobs(spec, models)
    levels = doubling(max_users, start=max(1, max_users // 16))
    plan = sweep(levels, trial_s / len(levels))
    record = TuneRecord(app=spec.name, slo_p95_ms=slo_p95_ms, max_trials=max_trials)
    runs: dict[int, RunRecord] = {}
    trials_dir = work_dir / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)
    proposals = proposals or search(space, baseline, max_trials, seed)
    knobs = next(proposals)
    while True:
        trial = Trial(number=len(record.trials), knobs=knobs, baseline=not record.trials and knobs == baseline)
        if not trial.baseline and not space.fits(knobs):
            trial.error = f"needs {space.cpus(knobs):g} CPUs, this machine has {space.total_cpus:g}"
        elif not (trial.baseline and fresh_app):
            spec_file = trials_dir / f"trial-{trial.number:02d}.yaml"
            trial_spec = spec.resolved() if trial.baseline else apply_knobs(spec, knobs)
            spec_file.write_text(yaml.safe_dump(trial_spec.model_dump(mode="json", exclude_none=True), sort_keys=False))
            trial.error = _deploy(spec_file, app.ray_address or "", work_dir / "deploys.log")  # set once started
            fresh_app = False
        if trial.error is None:
            config = RunConfig(
                url=app.url,
                app=spec.name,
                shape="sweep",
                users=max_users,
                spawn_rate=float(max_users),
                duration_s=trial_s,
                protocol=scenario.protocol,
                rows_per_request=scenario.rows_per_request,
                endpoints={e.name: e.weight for e in scenario.endpoints},
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            run = measure_run(
                scenario.model_copy(update={"base_url": app.url}),
                plan,
                config,
                app=app,
                ingress_replicas=spec.ingress.num_replicas,
                on_progress=functools.partial(on_progress, trial) if on_progress else None,
            )
            runs[trial.number] = run
            trial.stages = run.stages
            point = best_point(run.stages, slo_p95_ms)
            if point is not None:
                trial.best_rps, trial.best_p95_ms, trial.best_users = point.rps, point.p95_ms, point.users
        record.trials.append(trial)
        if on_trial:
            on_trial(trial)
        try:
            knobs = proposals.send(trial)
        except StopIteration as stop:
            record.stopped_because = stop.value
            break
    winner = max((t for t in record.trials if t.best_rps > 0), key=lambda t: t.best_rps, default=None)
    record.best = winner.number if winner else None
    record.summary = verdict(winner, record.baseline, slo_p95_ms, len(record.trials))
    tuned_yaml = None
    if winner is not None:
        targets = {name: round(max(1.0, (winner.best_users or 1) / k.replicas), 1) for name, k in winner.knobs.items()}
        header = (
            f"{spec.name}, tuned by `modelfleet tune` for p95 <= {slo_p95_ms:g} ms on {datetime.now(UTC):%Y-%m-%d}.\n"
            f"{record.summary}\nMeasured {winner.best_rps:,.1f} req/s at p95 {winner.best_p95_ms} ms with "
            f"{winner.best_users} concurrent requests; "
            "models with deployments of their own autoscale from the tuned replica count, aiming at that load per "
            "replica."
        )
        tuned_yaml = tuned_spec_yaml(spec, winner.knobs, targets, header)
        record.tuned_spec = f"{spec.name}.tuned.yaml"
    return TuneOutcome(record, runs, tuned_yaml)
