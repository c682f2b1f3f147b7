"""The tuning loop: deploy each configuration the search proposes onto one running app, sweep it, feed back the result.

The search itself (space, optuna, verdict) is pure and lives in `search.py`; one sweep is `measured_run.measure_run`.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from serve_apps.spec import AppSpec

from .app_process import AppProcess, DeployedApp
from .generator import Progress
from .measured_run import measure_run
from .records import ModelKnobs, RunConfig, RunRecord, Trial, TuneRecord
from .scenario import Scenario
from .search import Space, apply_knobs, baseline_knobs, best_point, search, tuned_spec_yaml, verdict
from .shapes import doubling, sweep

__all__ = ["TuneOutcome", "tune"]


@dataclass
class TuneOutcome:
    record: TuneRecord
    runs: dict[int, RunRecord]  # trial number -> its sweep, as a run
    tuned_yaml: str | None


def _deploy(spec_file: Path, ray_address: str, log: Path) -> str | None:
    """`modelfleet deploy` onto the run's Ray (a rolling update; a failed one leaves the previous version serving)."""
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "deploy", str(spec_file), "--address", ray_address, "--timeout", "5m"],
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
    app: AppProcess | DeployedApp,
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
