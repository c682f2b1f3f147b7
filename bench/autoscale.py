"""Autoscaling through a load step: 2 users, then 32, then 2 again, on digits, with three autoscaling configs.

The app is bench/autoscale_digits.yaml: digits as if on an accelerator (bench/_accelerated_digits.py), so that a
replica is capacity (on this 2-core box a CPU model's second replica would add none), 1 to 4 replicas. Sides, one
server after another, the same plan each:
- `spec`: the app as written, so modelfleet's autoscaling defaults (AutoscalingSpec);
- `ray`: the same with Ray Serve's own defaults (scale up after 30 s, down after 600 s, load reported every 10 s
  and averaged over 30 s);
- `tuned`: `modelfleet tune`'s recommendation for the same app and SLO (its tuned spec: knobs set, autoscaling
  from the tuned replica count, aimed at the load per replica it measured), or the tuned spec given by --tuned.

For each: how long after the step up until p95 is back within the SLO (and stays there 5 seconds), replica-seconds
spent, failed requests, and how long after the step down until the extra replicas are gone. Each side's load-test
report (bench/results/autoscale/<side>/index.html) plots replicas and p95 latency on one time axis.

    python -m bench.autoscale [--slo-p95-ms 200] [--sides spec,ray,tuned] [--tuned PATH]
"""

from __future__ import annotations

import loadtests.generator  # noqa: F401  (first: Locust's gevent patches the standard library)

# isort: split
import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtests.app_process import AppProcess, AppStartFailed
from loadtests.measured_run import measure_run
from loadtests.records import RunRecord
from loadtests.report import write_run_report
from loadtests.scenario import from_app
from loadtests.shapes import Stage
from serve_apps.spec import load_app_spec

from ._autoscale_analysis import recovery_s, release_s, replica_seconds
from ._harness import (
    REPO,
    RESULTS,
    console,
    exit_on_failure,
    interrupt_on_signals,
    print_table,
    spec_variant,
    write_results,
)
from ._load import run_config

SPEC = REPO / "bench" / "autoscale_digits.yaml"
OUT = RESULTS / "autoscale"
MODEL = "digits"
LOW_USERS, HIGH_USERS = 2, 32
STEP_UP_S, STEP_DOWN_S, END_S = 20.0, 60.0, 130.0
PLAN = [Stage(STEP_UP_S, LOW_USERS, 100), Stage(STEP_DOWN_S, HIGH_USERS, 100), Stage(END_S, LOW_USERS, 100)]
GOAL_RECOVERY_S = 10.0
# Ray Serve's AutoscalingConfig defaults (ray/serve/config.py), the `ray` side.
RAY_DEFAULTS = {
    "upscale_delay_s": 30.0,
    "downscale_delay_s": 600.0,
    "metrics_interval_s": 10.0,
    "look_back_period_s": 30.0,
}


@dataclass
class Side:
    name: str
    spec: str
    recovered_s: float | None  # after the step up, until p95 is within the SLO for STAYS_WITHIN_S seconds
    released_s: float | None  # after the step down, until the model is back at its min_replicas
    replica_seconds: float
    peak_replicas: int
    requests: int
    failures: int
    high_p95_ms: float | None  # p95 over the 32-user stage, its settling second left out
    report: str


def _measure(name: str, spec_path: Path, slo_ms: float) -> Side:
    spec = load_app_spec(spec_path)
    out = OUT / name
    console.print(
        f"[bold]{name}[/bold]: {spec_path.relative_to(REPO)}, {LOW_USERS} -> {HIGH_USERS} -> {LOW_USERS} users"
    )
    with AppProcess(spec_path, out / "app.log") as app:
        scenario = from_app(spec, app.url)
        config = run_config(scenario, PLAN, app=spec.name, shape="step 2 -> 32 -> 2")
        record = measure_run(scenario, PLAN, config, app=app, replica_interval_s=0.5)
    report = write_run_report(record, out)
    return _side(name, spec_path, record, slo_ms, spec.model(MODEL).autoscaling.min_replicas, report)


def _side(name: str, spec_path: Path, record: RunRecord, slo_ms: float, floor: int, report: Path) -> Side:
    high = next((s for s in record.stages if s.users == HIGH_USERS), None)
    # A model embedded in the ingress (the tuner may recommend it) has no deployment: the ingress's replicas run it.
    runs_in = MODEL if any(MODEL in p.replicas for p in record.replicas) else "ingress"
    return Side(
        name=name if runs_in == MODEL else f"{name} (embedded)",
        spec=str(spec_path.relative_to(REPO)),
        recovered_s=recovery_s(record.timeline, slo_ms, STEP_UP_S, STEP_DOWN_S),
        released_s=release_s(record.replicas, runs_in, floor, STEP_DOWN_S),
        replica_seconds=round(replica_seconds(record.replicas, runs_in, END_S), 1),
        peak_replicas=max((p.replicas.get(runs_in, 0) for p in record.replicas), default=0),
        requests=record.requests,
        failures=record.failures,
        high_p95_ms=high.p95_ms if high else None,
        report=str(report.relative_to(REPO)),
    )


def _ray_defaults_spec() -> Path:
    def ray_defaults(spec: dict) -> None:
        spec["models"][0]["autoscaling"].update(RAY_DEFAULTS)

    return spec_variant(SPEC, OUT / "ray.yaml", ray_defaults)


def _tuned_spec(slo_ms: float) -> Path:
    """`modelfleet tune`'s recommendation for the app at HIGH_USERS and the SLO (a few minutes)."""
    report = OUT / "tune"
    console.print(f"[bold]tuned[/bold]: modelfleet tune {SPEC.relative_to(REPO)} --slo-p95-ms {slo_ms:g}")
    argv = [sys.executable, "-m", "modelfleet", "tune", str(SPEC), "--slo-p95-ms", f"{slo_ms:g}"]
    argv += ["--max-trials", "4", "--users", str(HIGH_USERS), "--trial-duration", "20s", "--report", str(report)]
    subprocess.run(argv, cwd=REPO, check=True, stdin=subprocess.DEVNULL)
    tuned = report / f"{load_app_spec(SPEC).name}.tuned.yaml"
    if not tuned.exists():
        raise SystemExit(f"modelfleet tune recommended nothing (see {report / 'index.html'}); relax --slo-p95-ms")
    # Its artifact paths are the app spec's, relative to the app spec's folder.
    return spec_variant(tuned, OUT / "tuned.yaml", relative_to=SPEC.parent)


def _s(value: float | None, limit: str) -> str:
    return limit if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slo-p95-ms", type=float, default=200.0, help="The latency SLO: p95 in milliseconds.")
    parser.add_argument("--sides", default="spec,ray,tuned", help="Which configs, comma-separated: spec, ray, tuned.")
    parser.add_argument("--tuned", type=Path, help="A tuned spec to use for the `tuned` side (else: tune first).")
    args = parser.parse_args()
    interrupt_on_signals()
    specs = {
        "spec": lambda: SPEC,
        "ray": _ray_defaults_spec,
        "tuned": lambda: args.tuned or _tuned_spec(args.slo_p95_ms),
    }
    with exit_on_failure(failures=(AppStartFailed,)):
        sides = [_measure(name, specs[name](), args.slo_p95_ms) for name in args.sides.split(",")]
    print_table(
        f"digits (accelerated), {LOW_USERS} -> {HIGH_USERS} users at {STEP_UP_S:.0f} s -> {LOW_USERS} at "
        f"{STEP_DOWN_S:.0f} s, {END_S:.0f} s; SLO p95 ≤ {args.slo_p95_ms:g} ms",
        ["config", "back within SLO s", "p95 at 32 users ms", "replica-s", "peak replicas", "failed", "released s"],
        [
            [
                s.name,
                _s(s.recovered_s, "never"),
                _s(s.high_p95_ms, "-"),
                f"{s.replica_seconds:.0f}",
                str(s.peak_replicas),
                f"{s.failures} of {s.requests}",
                _s(s.released_s, f"> {END_S - STEP_DOWN_S:.0f}"),
            ]
            for s in sides
        ],
    )
    for s in sides:
        met = s.recovered_s is not None and s.recovered_s < GOAL_RECOVERY_S and s.failures == 0
        console.print(
            f"{s.name}: back within the SLO in under {GOAL_RECOVERY_S:.0f} s with no failed request: "
            f"{'met' if met else 'missed'}; report {s.report}"
        )
    path = write_results(
        "autoscale",
        {
            "command": " ".join(["python -m bench.autoscale", *sys.argv[1:]]),
            "slo_p95_ms": args.slo_p95_ms,
            "sides": sides,
        },
    )
    console.print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
