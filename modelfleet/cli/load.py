"""`modelfleet loadtest` and `modelfleet tune`: Locust against an app, and the tuner.

Both import Locust first thing (gevent patches the process), so they never
import Ray: the app under test runs in a `modelfleet run` subprocess.
"""

from __future__ import annotations

import math
import tempfile
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from loadtests.records import Protocol
from loadtests.shapes import Shape

from .console import LiveLine, bad_input, duration_s, err, failed, load_app, out

if TYPE_CHECKING:
    from loadtests.measure import Progress  # numpy: not at import time

__all__ = ["loadtest", "progress_line", "tune"]

MAX_DURATION_S = 6 * 3600
# Bounds a typo cannot get past (an extra zero would exhaust memory or processes before any request is sent).
MAX_USERS = 100_000
MAX_WORKERS = 128
MAX_ROWS = 100_000
MAX_SEED = 2**32 - 1  # numpy's seeds, which the tuner's sampler uses
# The command ran to the end and its result is a no (summary and report written): `tune` found no configuration
# within the SLO; `loadtest` saw requests fail. Not 1, which says the command itself could not run (the app did not
# start, Locust's workers did not connect, every trial failed to deploy).
NO_CONFIGURATION_MET_THE_SLO = 3
REQUESTS_FAILED = 3


def _model_ids(items: list[str]) -> dict[str, list[str]]:
    ids = {}
    for item in items:
        family, sep, listed = item.partition("=")
        if not sep or not family or not listed:
            bad_input(f"--model-ids {item!r}: expected FAMILY=ID1,ID2,...")
        ids[family] = [i for i in listed.split(",") if i]
    return ids


@contextmanager
def _app_under_test(spec_name: str, spec_path: Path, log_dir: Path):
    """`modelfleet run` in a subprocess of its own session, with status lines; stopped whatever happens."""
    from loadtests.app_process import AppProcess

    app_process = AppProcess(spec_path.resolve(), log_dir / "modelfleet-run.log")
    try:
        with err.status(f"starting {spec_name} on an embedded Ray (log: {app_process.log_path})…"):
            app_process.start()
        yield app_process
    finally:
        with err.status(f"stopping {spec_name}…"):
            app_process.stop()


ClusterAddress = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="A cluster's Ray address (or name), as `cluster up` prints it: the app runs there, deployed beforehand "
        "(tune deploys each trial there), instead of on an embedded Ray here.",
        show_default=False,
    ),
]


def _on_cluster(spec, address: str):
    """The app as deployed on the cluster at `address`, and the CPUs that cluster has for it (None: this machine's)."""
    from cluster.launch import LaunchError
    from cluster.remote import alive_nodes, find
    from groundwork import local_rays
    from loadtests.app_process import DeployedApp

    launched = find(address)
    if launched is not None:  # onprem or a cloud: reached at serve_url; its drivers run on its head
        try:
            cpus = sum(node["resources"].get("CPU", 0) for node in alive_nodes(launched))
        except LaunchError as exc:
            failed(str(exc))
        return DeployedApp(launched.serve_url, launched.address), cpus  # (the scenario adds the route prefix)
    for ray in local_rays.live_rays():
        if ray.kind == "local-sim" and address in (ray.ray_address, ray.name):
            return DeployedApp(ray.url, ray.ray_address, watch_replicas=True), None
    bad_input(
        f"--address {address}: no cluster launched from this machine (`modelfleet cluster up`) has this address; "
        "for any other server, load-test its URL"
    )


def _interrupted(app_started: bool = True) -> None:
    """Ctrl-C before any load ran, or a second one while the first was stopping it: everything started here has been
    stopped on the way out (the `finally`s); no report."""
    what = "the app and the load generator are" if app_started else "the load generator is"
    err.print(f"\ninterrupted; {what} stopped")
    raise typer.Exit(130)


def _kinds(failures: dict[str, int]) -> str:
    return ", ".join(f"{kind}: {count}" for kind, count in failures.items())


def progress_line(p: Progress) -> str:
    """The live line: how far the run is, and successful requests only; failures apart, by kind."""
    parts = [f"{p.elapsed_s:.0f}s/{p.total_s:.0f}s", f"{p.users} users", f"{p.rps:.1f} req/s ok"]
    if p.p50_ms is not None:
        parts.append(f"p50 {p.p50_ms:.0f} p95 {p.p95_ms:.0f} p99 {p.p99_ms:.0f} ms")
    failed = sum(p.failures.values())
    parts.append(f"{p.successes} ok, {failed} failed" + (f" ({_kinds(p.failures)})" if failed else ""))
    return "  ".join(parts)


def _print_run(record) -> None:
    answered = (
        f"{record.successes} succeeded: {record.rps:.1f} req/s, p50 {record.p50_ms} ms, p95 {record.p95_ms} ms, "
        f"p99 {record.p99_ms} ms"
        if record.successes
        else "none succeeded"
    )
    failed = f"{record.failures} failed" + (f" ({_kinds(record.failures_by_kind)})" if record.failures else "")
    out.print(escape(f"{record.requests} requests in {record.duration_s:.1f}s: {answered}; {failed}"))
    if record.server_requests is not None:
        out.print(f"the server counted {record.server_requests} requests")
    out.print(
        f"generator CPU {record.generator_cpu_cores:.2f} cores"
        + (
            f", server CPU {record.server_cpu_cores:.2f} cores, peak memory {record.server_memory_mb:.0f} MB"
            if record.server_cpu_cores is not None
            else ""
        )
    )
    for error, count in list(record.errors.items())[:5]:
        err.print(f"  [red]{count}x[/red] {escape(error)}", soft_wrap=True)
    for warning in record.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)


def loadtest(
    target: Annotated[
        str,
        typer.Argument(
            help="An app spec (started here on an embedded Ray, then stopped) or a URL to POST to.", show_default=False
        ),
    ],
    users: Annotated[
        int, typer.Option(min=1, max=MAX_USERS, help="Concurrent users (each keeps one request in flight).")
    ] = 10,
    spawn_rate: Annotated[float | None, typer.Option(help="Users started per second (default: all at once).")] = None,
    duration: Annotated[str, typer.Option(help="How long: 20s, 2m, 1h.")] = "60s",
    shape: Annotated[Shape, typer.Option(help="How the users come and go over the run.")] = Shape.constant,
    workers: Annotated[
        int,
        typer.Option(
            min=0, max=MAX_WORKERS, help="Locust worker processes (when one generator process is the bottleneck)."
        ),
    ] = 0,
    report: Annotated[
        Path | None, typer.Option(help="Write summary.json, Locust's CSVs and index.html (plots) here.")
    ] = None,
    protocol: Annotated[Protocol, typer.Option(help="v2 (Open Inference Protocol) or v1 (KServe).")] = Protocol.v2,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="Rows per request.")] = 1,
    model: Annotated[list[str] | None, typer.Option(help="Only these models of the app (repeatable).")] = None,
    weight: Annotated[
        list[str] | None, typer.Option(help="MODEL=WEIGHT: share of users per model (repeatable).")
    ] = None,
    model_ids: Annotated[
        list[str] | None, typer.Option(help="FAMILY=ID1,ID2: ids of a multiplexed family (Zipf-weighted).")
    ] = None,
    payload: Annotated[Path | None, typer.Option(help="With a URL: the JSON body to POST.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="MODELFLEET_API_KEY", help="Sent as Authorization: Bearer KEY.")
    ] = None,
    address: ClusterAddress = None,
) -> None:
    """Load-test an app (started here, or on a cluster: --address) or a URL with Locust, headless, with a live
    progress line and an optional report.

    Throughput and latency count successful requests only; failed ones are counted apart, by kind.

    Exit codes: 0 every request succeeded; 3 some failed (the summary and report are still written); 1 the run could
    not start (the app, or Locust's workers); 2 bad input; 130 interrupted (Ctrl-C during the load ends it there and
    still prints and writes what ran; a second Ctrl-C leaves at once).
    """
    from loadtests.app_process import AppStartFailed
    from loadtests.generator import generate  # noqa: F401  (first: Locust's gevent patches the process)
    from loadtests.measured_run import measure_run
    from loadtests.records import RunConfig
    from loadtests.scenario import ScenarioError, from_app, from_url, parse_weights
    from loadtests.shapes import stages

    seconds = duration_s(duration, "--duration", at_most_s=MAX_DURATION_S)
    if spawn_rate is not None and not (math.isfinite(spawn_rate) and spawn_rate > 0):
        bad_input(
            f"--spawn-rate {spawn_rate}: users started per second must be above 0; leave it out to start all at once"
        )
    plan = stages(shape, users, seconds, spawn_rate)
    is_spec = target.endswith((".yaml", ".yml")) and "://" not in target
    # Not the models' modules: this process runs Locust's gevent, and Ray, which a module may import, must not
    # share it. The `modelfleet run` started below checks them before its Ray starts.
    spec = load_app(Path(target), modules=False) if is_spec else None
    if address is not None and spec is None:
        bad_input(f"--address {address}: give the app's spec (to find it on the cluster), not a URL")
    try:
        if spec is None:
            if payload is None:
                bad_input(f"{target}: a URL needs --payload FILE (the JSON body to POST); or give an app spec")
            scenario = from_url(target, payload, api_key=api_key)
        else:
            scenario = from_app(
                spec,
                "http://127.0.0.1:0",
                protocol=protocol.value,
                rows=batch_size,
                models=model,
                weights=parse_weights(weight or []),
                model_ids=_model_ids(model_ids or []),
                api_key=api_key,
            )
    except ScenarioError as exc:
        bad_input(str(exc))
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)

    def run(base_url: str, app_process=None):
        config = RunConfig(
            url=base_url,
            app=spec.name if spec else None,
            shape=shape.value,
            users=users,
            spawn_rate=plan[0].spawn_rate,
            duration_s=seconds,
            workers=workers,
            protocol=scenario.protocol,
            rows_per_request=scenario.rows_per_request,
            endpoints={e.name: e.weight for e in scenario.endpoints},
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with LiveLine(f"load-testing {base_url}…") as line:
            return measure_run(
                scenario.model_copy(update={"base_url": base_url}),
                plan,
                config,
                app=app_process,
                workers=workers,
                report_dir=report,
                on_progress=lambda p: line.update(escape(progress_line(p))),
                stop_on_interrupt=True,
            )

    try:
        if spec is None:
            record = run(scenario.base_url)
        elif address is not None:
            deployed, _ = _on_cluster(spec, address)
            record = run(deployed.url, deployed)
        else:
            with _app_under_test(
                spec.name, Path(target), report or Path(tempfile.mkdtemp(prefix="modelfleet-loadtest-"))
            ) as app_process:
                record = run(app_process.url, app_process)
    except AppStartFailed as exc:
        failed(str(exc))
    except RuntimeError as exc:  # Locust workers that never connected
        failed(str(exc))
    except KeyboardInterrupt:
        _interrupted(app_started=spec is not None)
    _print_run(record)
    if report is not None:
        from loadtests.report import write_run_report

        index = write_run_report(record, report)
        out.print(f"report: {index}   (summary.json, locust_*.csv next to it)")
    if record.interrupted_at_s is not None:
        what = "the app and the load generator are" if spec is not None else "the load generator is"
        err.print(
            f"interrupted after {record.interrupted_at_s:.0f}s (the figures cover that much); {what} stopped",
            soft_wrap=True,
        )
        raise typer.Exit(130)
    if record.failures:
        raise typer.Exit(REQUESTS_FAILED)


def tune(
    spec_path: Annotated[Path, typer.Argument(help="The app spec (YAML) to tune.", show_default=False)],
    slo_p95_ms: Annotated[float, typer.Option("--slo-p95-ms", min=0.1, help="Latency budget: p95 in milliseconds.")],
    max_trials: Annotated[
        int, typer.Option(min=1, max=200, help="Configurations to measure, the spec's own included.")
    ] = 12,
    report: Annotated[
        Path | None,
        typer.Option(help="Folder for index.html, trials.csv and <app>.tuned.yaml (default: ./<app>-tune)."),
    ] = None,
    users: Annotated[
        int,
        typer.Option(
            min=1, max=MAX_USERS, help="Most concurrent requests in each trial's sweep (it doubles up to this)."
        ),
    ] = 32,
    trial_duration: Annotated[str, typer.Option(help="Length of each trial's sweep: 20s, 1m.")] = "25s",
    model: Annotated[
        list[str] | None,
        typer.Option(help="Tune only these models (repeatable); default: every model with a deployment."),
    ] = None,
    protocol: Annotated[Protocol, typer.Option(help="v2 (Open Inference Protocol) or v1 (KServe).")] = Protocol.v2,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_ROWS, help="Rows per request.")] = 1,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the search (same seed, same proposals).")] = 0,
    api_key: Annotated[
        str | None, typer.Option(envvar="MODELFLEET_API_KEY", help="Sent as Authorization: Bearer KEY.")
    ] = None,
    address: ClusterAddress = None,
) -> None:
    """Find the settings with the most throughput at p95 within the SLO: deploy, sweep, keep the best, write a spec."""
    from loadtests.app_process import AppStartFailed
    from loadtests.generator import generate  # noqa: F401  (first: Locust's gevent patches the process)
    from loadtests.report import write_tune_report
    from loadtests.scenario import ScenarioError, from_app
    from loadtests.search import default_space, tunable
    from loadtests.tuner import tune as run_tuner

    trial_s = duration_s(trial_duration, "--trial-duration", at_most_s=MAX_DURATION_S)
    spec = load_app(spec_path, modules=False)  # as loadtest: the `modelfleet run` it starts checks them
    names = model or [m.name for m in spec.models if tunable(m)]
    unknown = [n for n in names if n not in {m.name for m in spec.models}]
    if unknown:
        bad_input(f"--model {unknown[0]!r}: not a model of {spec_path}; its models are {[m.name for m in spec.models]}")
    fixed = [n for n in names if not tunable(spec.model(n))]
    if fixed or not names:
        bad_input(
            f"{spec_path}: {fixed or 'no model'} has no deployment of its own to tune (pipelines and embedded models "
            "scale with the ingress)"
        )
    try:
        scenario = from_app(spec, "http://127.0.0.1:0", protocol=protocol.value, rows=batch_size, api_key=api_key)
    except ScenarioError as exc:
        bad_input(str(exc))
    deployed, cluster_cpus = _on_cluster(spec, address) if address is not None else (None, None)
    space = default_space(spec, names, cluster_cpus)
    directory = report or Path(f"{spec.name}-tune")
    directory.mkdir(parents=True, exist_ok=True)
    for note in space.notes:
        err.print(f"note: {escape(note)}", soft_wrap=True)

    def announce(trial) -> None:
        result = (
            f"{trial.best_rps:,.1f} req/s at p95 {trial.best_p95_ms} ms ({trial.best_users} users)"
            if trial.best_rps
            else "no stage met the SLO"
        )
        out.print(
            f"trial {trial.number}{' (current config)' if trial.baseline else ''}: {trial.label()} -> "
            f"{trial.error or result}"
        )

    def run(app, line, fresh_app: bool):
        return run_tuner(
            spec,
            app,
            scenario,
            space,
            slo_p95_ms=slo_p95_ms,
            max_trials=max_trials,
            max_users=users,
            trial_s=trial_s,
            work_dir=directory,
            seed=seed,
            fresh_app=fresh_app,  # on a cluster, the spec as given is deployed first: what runs there is unknown
            on_trial=announce,
            on_progress=lambda t, p: line.update(escape(f"trial {t.number}: " + progress_line(p))),
        )

    try:
        if deployed is not None:
            with LiveLine(f"tuning on {address}…") as line:
                outcome = run(deployed, line, fresh_app=False)
        else:
            with _app_under_test(spec.name, spec_path, directory) as app_process, LiveLine("tuning…") as line:
                outcome = run(app_process, line, fresh_app=True)
    except AppStartFailed as exc:
        failed(str(exc))
    except KeyboardInterrupt:
        _interrupted()
    record = outcome.record
    if outcome.tuned_yaml is not None and record.tuned_spec is not None:
        (directory / record.tuned_spec).write_text(outcome.tuned_yaml)
    index = write_tune_report(record, directory, outcome.runs.get(record.best) if record.best is not None else None)
    out.print(f"\n{record.summary}\n(stopped: {record.stopped_because})")
    if record.tuned_spec:
        out.print(f"tuned spec: {directory / record.tuned_spec}")
    out.print(f"report: {index}   (trials.csv next to it)")
    code = tune_exit_code(record)
    if code == 1:
        failed(f"every trial failed to run; the first said: {record.trials[0].error}")
    raise typer.Exit(code)


def tune_exit_code(record) -> int:
    """0: a recommendation; 3: the trials ran and none met the SLO (a result); 1: no trial ran at all."""
    if record.best is not None:
        return 0
    return 1 if record.trials and all(t.error for t in record.trials) else NO_CONFIGURATION_MET_THE_SLO
