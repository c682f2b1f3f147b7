"""The tuner against an exhaustive grid over the same space, on the same app in the same run.

    python -m bench.tuner [--apps echo digits] [--users 16] [--trial-duration 15]

For each app: one `modelfleet run`; every configuration of the grid is
deployed and swept; then the tuner (optuna's TPE, the spec's own config
first) gets a third of the grid's trials. Target: the tuner's best reaches
95% of the grid's best throughput within the SLO. Both measure the same way
(session.tune), so the only difference is which configurations they choose.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import locust  # noqa: F401  (first: gevent patches the standard library)

from loadtests.app_process import AppProcess
from loadtests.scenario import from_app
from loadtests.search import Space, baseline_knobs, default_space
from loadtests.tuner import tune
from serve_apps.spec import load_app_spec

from ._harness import REPO, RESULTS, console, print_table, write_results

SLO_P95_MS = {"echo": 50.0, "digits": 50.0}
# A smaller space than `modelfleet tune` searches, so that the grid fits in minutes: the spec's own values, plus these.
MAX_ONGOING = [8, 32, 128]
BATCH_SIZES = [0, 32]
BATCH_WAITS_S = [0.002, 0.01]
CONFIRM_ROUNDS = 3


def bench_space(spec, model: str) -> Space:
    space = default_space(spec, [model])
    base = baseline_knobs(spec, [model])[model]
    m = space.models[model]
    space.models[model] = replace(
        m,
        max_ongoing=sorted(set(MAX_ONGOING) | {base.max_ongoing_requests}),
        batch_sizes=sorted(set(BATCH_SIZES) | {base.max_batch_size or 0}),
        batch_waits_s=sorted(
            set(BATCH_WAITS_S) | ({base.batch_wait_timeout_s} if base.batch_wait_timeout_s else set())
        ),
        replicas=[r for r in m.replicas if r <= 2],
        embeddable=False,  # the space the recorded run (BENCHMARKS.md) searched, before the tuner could embed a model
    )
    return space


def exhaustive(configs):
    yield from configs
    return f"all {len(configs)} configurations measured"


def bench_app(name: str, users: int, trial_s: float) -> dict:
    spec_path = REPO / "examples" / name / "app.yaml"
    spec = load_app_spec(spec_path)
    model = spec.models[0].name
    space = bench_space(spec, model)
    grid = space.grid()
    budget = max(2, len(grid) // 3)
    work = RESULTS / "tuner" / name
    scenario = from_app(spec, "http://127.0.0.1:0")
    console.print(
        f"[bold]{name}[/bold]: grid of {len(grid)} configurations, tuner budget {budget}, SLO p95 <= "
        f"{SLO_P95_MS[name]:g} ms"
    )

    def show(trial) -> None:
        console.print(
            f"  trial {trial.number}: {trial.label()} -> {trial.best_rps:,.1f} req/s"
            + (f" ({trial.error})" if trial.error else "")
        )

    common = dict(slo_p95_ms=SLO_P95_MS[name], max_users=users, trial_s=trial_s, on_trial=show)
    with AppProcess(spec_path, work / "modelfleet-run.log") as app:
        console.print("grid:")
        searched = tune(
            spec,
            app,
            scenario,
            space,
            max_trials=len(grid),
            work_dir=work / "grid",
            proposals=exhaustive(grid),
            **common,
        )
        console.print("tuner:")
        tuned = tune(spec, app, scenario, space, max_trials=budget, work_dir=work / "tuner", fresh_app=False, **common)
        # A best-of-N is biased upwards by noise, the grid's most (it has the most draws): re-measure both
        # winners side by side, alternating, and compare the means.
        winners = [r.record.trial(r.record.best).knobs for r in (searched, tuned) if r.record.best is not None]
        confirmed = None
        if len(winners) == 2 and winners[0] != winners[1]:
            console.print(f"confirming, {CONFIRM_ROUNDS} rounds each:")
            again = tune(
                spec,
                app,
                scenario,
                space,
                max_trials=2 * CONFIRM_ROUNDS,
                work_dir=work / "confirm",
                fresh_app=False,
                proposals=exhaustive(winners * CONFIRM_ROUNDS),
                **common,
            ).record.trials
            grid_again = [t.best_rps for t in again[0::2]]
            tuner_again = [t.best_rps for t in again[1::2]]
            confirmed = {
                "grid_winner_rps": grid_again,
                "tuner_winner_rps": tuner_again,
                "ratio": round(sum(tuner_again) / sum(grid_again), 3) if sum(grid_again) else None,
            }
        elif len(winners) == 2:
            confirmed = {"same_configuration": True, "ratio": 1.0}
    grid_best = max(t.best_rps for t in searched.record.trials)
    tuner_best = max(t.best_rps for t in tuned.record.trials)
    return {
        "app": name,
        "slo_p95_ms": SLO_P95_MS[name],
        "space_size": len(grid),
        "users": users,
        "trial_s": trial_s,
        "grid_trials": len(searched.record.trials),
        "grid_best_rps": grid_best,
        "grid_best": searched.record.trial(searched.record.best).label() if searched.record.best is not None else None,
        "tuner_trials": len(tuned.record.trials),
        "tuner_best_rps": tuner_best,
        "tuner_best": tuned.record.trial(tuned.record.best).label() if tuned.record.best is not None else None,
        "tuner_stopped_because": tuned.record.stopped_because,
        "ratio": round(tuner_best / grid_best, 3) if grid_best else None,
        "confirmed": confirmed,
        "grid": searched.record.model_dump(mode="json"),
        "tuner": tuned.record.model_dump(mode="json"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", nargs="+", default=["echo", "digits"], choices=sorted(SLO_P95_MS))
    parser.add_argument("--users", type=int, default=16, help="most concurrent requests in each trial's sweep")
    parser.add_argument("--trial-duration", type=float, default=15.0, help="seconds per trial's sweep")
    args = parser.parse_args()
    results = [bench_app(name, args.users, args.trial_duration) for name in args.apps]
    print_table(
        "tuner vs exhaustive grid (same space, same run)",
        [
            "app",
            "grid: trials",
            "grid: best req/s",
            "tuner: trials",
            "tuner: best req/s",
            "tuner / grid",
            "re-measured",
        ],
        [
            [
                r["app"],
                str(r["grid_trials"]),
                f"{r['grid_best_rps']:,.1f}",
                str(r["tuner_trials"]),
                f"{r['tuner_best_rps']:,.1f}",
                f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
                f"{r['confirmed']['ratio']:.2f}x" if r["confirmed"] and r["confirmed"]["ratio"] is not None else "-",
            ]
            for r in results
        ],
    )
    path = write_results(
        "tuner",
        {
            "command": "python -m bench.tuner "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if not isinstance(v, list)),
            "results": results,
        },
    )
    console.print(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
