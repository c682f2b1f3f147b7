"""`modelfleet rollout`: a new version of a model takes traffic step by step, judged against the version it replaces,
and is promoted, or taken back at the first breach.

The candidate serves from a Serve application of its own beside the app, and the app's rollout desk (a named Ray
actor every ingress replica follows twice a second) holds the split (serve_apps/rollout.py): starting, stepping and
taking back a candidate never redeploys the app. Promotion does, once: the app's model becomes the candidate's
version (a rolling update, while the candidate still answers everything), then the candidate is removed.

Where a rollout stands lives in the registry's store (registry/rollouts.py), so `rollout status` shows it from
anywhere, and a killed `rollout start` is carried on by `rollout resume`. Each step is recorded there and sent to
webhooks (`rollout.*` events).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from registry import RegistryError

from .console import bad_input, duration_s, err, failed, load_app, out, ray_notices_on_stderr
from .events import ROLLOUT_SOURCE, registry_events
from .registry_refs import open_registry, record_served
from .serve import InsecureNoRayAuth, RayAddress, _connect, _launched_cluster, _resolve, _staged_code, require_ray_auth

app = typer.Typer(
    help="Roll out a new version of a model: canary, A/B or shadow, judged step by step, promoted or taken back.",
    no_args_is_help=True,
)

CONTROLLER_STALE_S = 15  # a controller this long without a heartbeat is gone: `resume` takes over
ROLLED_BACK = 3  # exit code: the rollout ran, and the answer is no (as `tune` and `loadtest` use 3)
CANDIDATE_START_S = 600  # how long the candidate's replicas may take to start
DEFAULT_STEPS = {"canary": "5,25,50,100", "ab": "50", "shadow": "100"}

ModelName = Annotated[str, typer.Option("--model", help="The app's model to roll out.", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AppPath = Annotated[Path, typer.Argument(help="The app spec (YAML) of the running app.", show_default=False)]


def _steps(text: str, strategy: str) -> list[float]:
    try:
        steps = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        bad_input(f"--steps {text!r}: expected percentages, e.g. 5,25,50,100")
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(steps):
        bad_input(f"--steps {text!r}: rising percentages above 0 and at most 100, e.g. 5,25,50,100")
    if strategy == "canary" and steps[-1] != 100:
        bad_input(f"--steps {text!r}: a canary ends at 100 (its last step promotes)")
    return steps


def _controller_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Cluster:
    """This command's view of the cluster: Serve, the app's desk and the candidate's application."""

    def __init__(self, address: str, spec_for_code, staging: str):
        self.address = address
        self.target = _connect(address, _staged_code(spec_for_code, Path(staging)))

    def running_app(self, app: str) -> dict:
        """The running app's spec, key hashes and listen address (what `modelfleet deploy` put there)."""
        from serve_apps.deploy import _describe

        status = _serve().status().applications.get(app)
        if status is None or status.status.value != "RUNNING":
            bad_input(f"app {app!r} is not running on {self.address}: deploy it first (`modelfleet deploy`)")
        described = _describe(app)
        if described is None:
            failed(f"app {app!r} on {self.address} does not answer `describe`: is it a modelfleet app?")
        return described


@contextmanager
def _connected(address: str, spec) -> Iterator[_Cluster]:
    """The cluster at `address`, joined as a driver with this project's code and the models' staged, for a block."""
    with tempfile.TemporaryDirectory(prefix="modelfleet-code-") as staging:
        cluster = _Cluster(address, spec, staging)
        try:
            yield cluster
        finally:
            cluster.target.disconnect()


def _serve():
    from ray import serve

    return serve


class _Rollout:
    """Drives one stored rollout until it ends (or this command is stopped)."""

    def __init__(self, store, cluster: _Cluster, rollout, send: Callable[..., object]):
        from serve_apps.rollout import Limits
        from serve_apps.spec import ModelSpec

        self.store, self.cluster, self.send = store, cluster, send
        self.rollout = rollout
        plan = rollout.plan
        self.candidate = ModelSpec.model_validate(plan["candidate"])
        self.steps: list[float] = plan["steps"]
        self.interval_s: float = plan["interval_s"]
        self.limits = Limits(**plan["limits"])
        self.tick_s = min(0.5, self.interval_s / 4)  # a breach is acted on within a tick and the ingress's sync
        self.baseline_p95_s: float | None = plan.get("baseline_p95_s")
        self._opened_desk = None

    # ---- the record ---------------------------------------------------------------------------------------------

    def _update(
        self, kind: str | None = None, detail: dict | None = None, expect: tuple[str, ...] | None = None, **fields: Any
    ) -> None:
        event = (kind, detail or {}) if kind else None
        self.rollout = self.store.update_rollout(self.rollout.id, event=event, expect=expect, **fields)
        if kind:
            data = {"rollout": self.rollout.id, "app": self.rollout.app, "model": self.rollout.model, **(detail or {})}
            self.send(f"rollout.{kind}", data, f"{self.rollout.app}/{self.rollout.model}")

    def _say(self, line: str) -> None:
        err.print(f"rollout #{self.rollout.id} {self.rollout.app}/{self.rollout.model}: {line}", soft_wrap=True)

    # ---- the cluster ----------------------------------------------------------------------------------------------

    def _traffic(self, share: float | None) -> dict | None:
        """The desk's traffic for this model with the candidate at `share` percent (None: no candidate)."""
        from serve_apps.rollout import candidate_app
        from serve_apps.traffic import ModelTraffic, Route, candidate_deployment

        if share is None:
            return None
        strategy, version = self.rollout.strategy, self.rollout.candidate_version
        route = Route(
            version,
            candidate_deployment(self.rollout.model, version),
            candidate_app(self.rollout.app, self.rollout.model, version),
            weight=0.0 if strategy == "shadow" else share,
            shadow=share if strategy == "shadow" else 0.0,
        )
        return ModelTraffic(self.rollout.baseline_version, (route,), sticky=strategy == "ab").to_dict()

    @property
    def _desk(self):
        """The app's desk, opened once: each open is a round trip to Ray's GCS, and the loop reads it twice a second."""
        from serve_apps.rollout import open_desk

        if self._opened_desk is None:
            self._opened_desk = open_desk(self.rollout.app)
        return self._opened_desk

    def _set_share(self, share: float | None) -> None:
        """The candidate's share on the desk; returns once every live ingress replica routes by it (each hears within
        SYNC_S), so a window's requests go by its share, and a candidate taken out after this gets no new request."""
        import ray

        from serve_apps.rollout import SILENT_S

        change = ray.get(self._desk.set_traffic.remote(self.rollout.model, self._traffic(share)), timeout=30)
        deadline = time.monotonic() + 2 * SILENT_S  # a replica that stops syncing is taken for gone after SILENT_S
        while ray.get(self._desk.unheard.remote(change), timeout=30) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _tallies(self):
        """(baseline, candidate) tallies, summed over the ingress replicas, as the desk has them now."""
        import ray

        from serve_apps.rollout import VersionTally

        found = ray.get(self._desk.tallies.remote(self.rollout.model), timeout=30)
        return tuple(
            VersionTally.from_dict(found[v]) if v in found else VersionTally()
            for v in (self.rollout.baseline_version, self.rollout.candidate_version)
        )

    def _start_candidate(self) -> bool:
        """The candidate's application, started unless it runs; False (and rolled back) if it does not start."""
        from serve_apps.deploy import DeployFailed, RayTarget
        from serve_apps.rollout import candidate_app, deploy_candidate

        name = candidate_app(self.rollout.app, self.rollout.model, self.rollout.candidate_version)
        if name not in _serve().status().applications:
            self._say(
                f"starting version {self.rollout.candidate_version} beside version {self.rollout.baseline_version}…"
            )
            deploy_candidate(self.rollout.app, self.candidate)
        try:
            RayTarget._wait_running(name, None, CANDIDATE_START_S)
        except DeployFailed as exc:
            self._take_back("rolled_back", f"the candidate did not start: {exc}")
            return False
        self._record_candidate("deployed")
        return True

    def _record_candidate(self, outcome: str) -> None:
        """The candidate's deployment (its own application) in the registry's record."""
        from registry import parse_ref
        from serve_apps.rollout import candidate_app

        registered = parse_ref(self.rollout.plan["candidate_registered"])
        assert registered.version is not None
        app = candidate_app(self.rollout.app, self.rollout.model, self.rollout.candidate_version)
        try:
            self.store.record_served(app, self.cluster.address, [(registered.name, registered.version)], outcome)
        except Exception as exc:  # the record is for people; the rollout goes on
            err.print(f"warning: the registry did not record the candidate as {outcome}: {exc}")

    def _withdraw_candidate(self) -> None:
        """The model's own traffic again, heard by every ingress replica before the candidate's app is removed: a
        request sent to a stopping replica after Serve's drain wait would fail."""
        from serve_apps.rollout import close_desk_if_idle, remove_candidate

        self._set_share(None)
        remove_candidate(self.rollout.app, self.rollout.model, self.rollout.candidate_version)
        close_desk_if_idle(self.rollout.app)

    def _take_back(self, state: Literal["rolled_back", "aborted"], reason: str) -> None:
        """Every request back to the baseline at once, then the candidate removed."""
        self._withdraw_candidate()
        self._record_candidate(state)
        self._update(state, {"reason": reason}, state=state, reason=reason, weight=0.0, controller=None)
        self._say(f"{state.replace('_', ' ')}: {reason}; version {self.rollout.baseline_version} answers everything")

    def promote(self) -> None:
        """The app's model becomes the candidate's version (a rolling update while the candidate answers everything),
        the alias it came from moves, and the candidate is removed."""
        from serve_apps.auth import KeyRing
        from serve_apps.deploy import DeployFailed
        from serve_apps.spec import AppSpec

        self._update("promoting", {}, expect=("running", "paused", "promoting"), state="promoting")
        self._say(f"promoting version {self.rollout.candidate_version}…")
        if self.rollout.strategy != "shadow":
            self._set_share(100.0)
        running = self.cluster.running_app(self.rollout.app)
        spec = AppSpec.model_validate(running["spec"])
        model = spec.model(self.rollout.model)
        assert self.candidate.artifact is not None  # a candidate always has one
        model.artifact = self.candidate.artifact.model_copy()
        model.version, model.module = self.candidate.version, self.candidate.module
        model.candidates = [c for c in model.candidates if c.version != self.candidate.version]
        listen = (running["listen"]["host"], running["listen"]["port"]) if running.get("listen") else None
        try:
            self.cluster.target.deploy(
                spec, KeyRing.from_hashes(running["keys"]), timeout_s=CANDIDATE_START_S, listen=listen, proven=True
            )
        except DeployFailed as exc:
            self._take_back("rolled_back", f"promotion failed, the app was left as it was: {exc}")
            return
        self._withdraw_candidate()
        self._record_candidate("promoted")
        moved = self._move_alias()
        record_served(spec, self.cluster.address, "deployed")
        self._update(
            "promoted",
            {"version": self.rollout.candidate_version, "alias": moved},
            state="promoted",
            weight=100.0,
            controller=None,
        )
        self._say(
            f"promoted: version {self.rollout.candidate_version} serves everything" + (f"; {moved}" if moved else "")
        )

    def _move_alias(self) -> str | None:
        from registry import parse_ref

        alias, registered = self.rollout.plan.get("alias"), self.rollout.plan.get("candidate_registered")
        if not alias or not registered:
            return None
        ref = parse_ref(registered)
        assert ref.version is not None
        self.store.set_alias(ref.name, alias, ref.version)
        data = {"name": ref.name, "alias": alias, "version": ref.version}
        self.send("model_version_alias.created", data, f"{ref.name}@{alias}")
        return f"{ref.name}@{alias} -> {registered}"

    # ---- the loop -------------------------------------------------------------------------------------------------

    def drive(self) -> str:
        """Step through the plan from where the stored rollout stands; the state it ends in."""
        self._update(controller=_controller_id(), heartbeat_at=datetime.now(UTC))
        if not self._start_candidate():
            return self.rollout.state
        for index in range(self.rollout.step, len(self.steps)):
            ended = self._run_step(index)
            if ended is not None:
                return ended
        if self.rollout.strategy == "canary":
            self.promote()
        return self.rollout.state

    def _run_step(self, index: int) -> str | None:
        """Hold step `index` until its window passes (None: go on), or the rollout ends (its state)."""
        from serve_apps.rollout import judge

        share, last = self.steps[index], index == len(self.steps) - 1
        self._set_share(share)
        what = "of requests copied to" if self.rollout.strategy == "shadow" else "of requests to"
        self._update("step", {"step": index + 1, "of": len(self.steps), "share": share}, step=index, weight=share)
        self._say(f"step {index + 1}/{len(self.steps)}: {share:g}% {what} version {self.rollout.candidate_version}")
        base0, cand0 = self._tallies()
        started, said, held = time.monotonic(), "", False
        while True:
            time.sleep(self.tick_s)
            try:  # the heartbeat, and where the rollout stands: one write
                self.rollout = self.store.update_rollout(
                    self.rollout.id,
                    expect=("running", "paused"),
                    heartbeat_at=datetime.now(UTC),
                    controller=_controller_id(),
                )
            except RegistryError:  # promoted, promoting or aborted by another command meanwhile
                self.rollout = self.store.get_rollout(self.rollout.id)
                return self.rollout.state
            if self.rollout.state == "paused":
                base0, cand0 = self._tallies()  # a window starts again on resume
                started = time.monotonic()
                continue
            base, cand = self._tallies()
            whole = time.monotonic() - started >= self.interval_s  # a window still running is judged on errors alone
            verdict = judge(cand.minus(cand0), base.minus(base0), self.limits, self.baseline_p95_s, latency=whole)
            if verdict.outcome == "breach":
                self._take_back("rolled_back", verdict.reason)
                return self.rollout.state
            if not whole:
                continue
            if verdict.outcome == "inconclusive":
                if verdict.reason != said:
                    self._say(f"step {index + 1}: inconclusive ({verdict.reason}); waiting")
                    said = verdict.reason
                continue
            window = base.minus(base0)
            if window.requests >= self.limits.min_requests:
                self.baseline_p95_s = window.quantile_s(0.95)
            if not held:
                self._update("passed", {"step": index + 1, "verdict": verdict.reason})
                self._say(f"step {index + 1} passed: {verdict.reason}")
            if not last or self.rollout.strategy == "canary":
                return None
            # ab and shadow hold their last step until an operator promotes or aborts: each window is judged on.
            base0, cand0, started, held = base, cand, time.monotonic(), True


# ---- commands -----------------------------------------------------------------------------------------------------


def _open(spec_path: Path, model: str, address: str | None, insecure_no_ray_auth: bool):
    """The app spec (pinned), its model, and the Ray address."""
    from serve_apps.deploy import prepare_ray_env

    address = _resolve(address)
    require_ray_auth(insecure_no_ray_auth, "on the cluster's nodes")
    prepare_ray_env(address)
    spec = load_app(spec_path)
    if model not in {m.name for m in spec.models}:
        bad_input(
            f"{spec_path}: app {spec.name!r} has no model {model!r}; it has {sorted(m.name for m in spec.models)}"
        )
    if _launched_cluster(address) is not None:
        bad_input(f"{address} is a cluster `cluster up` launched: run `modelfleet rollout` on its head for now")
    return spec, address


def _exit_for(state: str) -> None:
    if state in ("rolled_back",):
        raise typer.Exit(ROLLED_BACK)


@app.command("start")
def rollout_start(
    spec_path: AppPath,
    model: ModelName,
    to: Annotated[str, typer.Option("--to", help="The candidate: models:/NAME/VERSION.", show_default=False)],
    strategy: Annotated[
        str, typer.Option("--strategy", help="canary (steps up, promotes), ab (sticky split, held), shadow (copies).")
    ] = "canary",
    steps: Annotated[
        str | None,
        typer.Option(help="Percentages of requests, one per interval (canary default 5,25,50,100; ab 50; shadow 100)."),
    ] = None,
    interval: Annotated[str, typer.Option(help="How long each step is judged: 30s, 5m.")] = "60s",
    max_error_rate: Annotated[
        float, typer.Option(min=0, max=1, help="The candidate's errors (5xx) per request.")
    ] = 0.01,
    max_p95_ratio: Annotated[
        float | None, typer.Option(min=1, help="The candidate's p95 against the baseline's, same window.")
    ] = 1.25,
    max_p95_ms: Annotated[
        float | None, typer.Option(min=0, help="The candidate's p95, in ms (instead of a ratio).")
    ] = None,
    min_requests: Annotated[int, typer.Option(min=1, help="Fewer in a window is inconclusive, never a pass.")] = 100,
    alias: Annotated[
        str | None, typer.Option(help="The alias promotion moves (default: the one the app's model names, if any).")
    ] = None,
    address: RayAddress = None,
    insecure_no_ray_auth: InsecureNoRayAuth = False,
) -> None:
    """Start a rollout of a registered version of an app's model, and drive it until it is promoted or taken back
    (Ctrl-C leaves it where it stands: `rollout resume` carries it on)."""
    from registry import parse_ref
    from serve_apps.spec import ArtifactSpec, CandidateSpec

    if strategy not in DEFAULT_STEPS:
        bad_input(f"--strategy {strategy!r}: canary, ab or shadow")
    plan_steps = _steps(steps or DEFAULT_STEPS[strategy], strategy)
    interval_s = duration_s(interval, "--interval", at_most_s=24 * 3600)
    ratio = None if max_p95_ms is not None else max_p95_ratio
    spec, address = _open(spec_path, model, address, insecure_no_ray_auth)
    baseline = spec.model(model)
    if baseline.embedded or baseline.multiplex is not None or baseline.pipeline is not None:
        bad_input(
            f"{spec_path}: model {model!r} is embedded, a multiplexed family or a pipeline: it serves one version"
        )
    with registry_events(ROLLOUT_SOURCE) as send, open_registry() as store:
        ref = parse_ref(to)
        if ref.version is None:
            bad_input(f"--to {to!r}: name one version, models:/NAME/VERSION")
        registered = store.get(ref)
        if registered.format != baseline.format.value:
            bad_input(f"--to {to}: a {registered.format} artifact, and {model!r} loads {baseline.format.value}")
        candidate = baseline.candidate_spec(
            CandidateSpec(
                version=str(registered.version),
                artifact=ArtifactSpec(
                    uri=registered.artifact_uri, sha256=registered.sha256, registered_as=registered.uri
                ),
                module=registered.module or None,
            )
        )
        promote_alias = alias
        named = baseline.artifact.registered_as if baseline.artifact is not None else None
        if promote_alias is None and named and "@" in named:
            promote_alias = named.rsplit("@", 1)[1]
        with _connected(address, spec) as cluster:
            running = _running_spec(cluster.running_app(spec.name)).model(model)
            if running.version == candidate.version:
                bad_input(f"--to {to}: {spec.name}/{model} already serves version {candidate.version}")
            plan = {
                "candidate": candidate.model_dump(mode="json"),
                "candidate_registered": registered.uri,
                "steps": plan_steps,
                "interval_s": interval_s,
                "limits": {
                    "max_error_rate": max_error_rate,
                    "max_p95_ratio": ratio,
                    "max_p95_ms": max_p95_ms,
                    "min_requests": min_requests,
                },
                "alias": promote_alias,
            }
            rollout = store.start_rollout(spec.name, model, address, strategy, running.version, candidate.version, plan)
            send(
                "rollout.started",
                {"rollout": rollout.id, "app": spec.name, "model": model, **plan},
                f"{spec.name}/{model}",
            )
            _drive(store, cluster, rollout, send)


def _running_spec(described: dict):
    from serve_apps.spec import AppSpec

    return AppSpec.model_validate(described["spec"])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _drive(store, cluster: _Cluster, rollout, send) -> None:
    """Drive `rollout` here until it ends; Ctrl-C or SIGTERM leave it where it stands, for `resume`."""
    driver = _Rollout(store, cluster, rollout, send)
    signal.signal(signal.SIGTERM, _interrupt)  # after Ray's own handler (set when it connected): stop as Ctrl-C does
    try:
        state = driver.drive()
    except KeyboardInterrupt:
        store.update_rollout(rollout.id, controller=None)
        err.print(
            f"\nstopped driving rollout #{rollout.id}: it holds where it stands ({driver.rollout.weight:g}%); "
            "`modelfleet rollout resume` carries it on, `rollout abort` ends it"
        )
        raise typer.Exit(130) from None
    _exit_for(state)


def _active(store, spec, model: str, address: str):
    rollout = store.rollout(spec.name, model, address)
    if rollout is None:
        bad_input(f"no rollout of {spec.name}/{model} on {address}")
    return rollout


def _controller_alive(rollout) -> bool:
    """Whether a command still drives `rollout`: its heartbeat is fresh and, on this machine, its process lives."""
    if rollout.controller is None or rollout.heartbeat_at is None:
        return False
    if datetime.now(UTC) - rollout.heartbeat_at > timedelta(seconds=CONTROLLER_STALE_S):
        return False
    host, _, pid = rollout.controller.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False  # killed (SIGKILL leaves no word): no need to wait out its heartbeat
        except PermissionError:
            pass
    return True


@app.command("status")
def rollout_status(
    spec_path: AppPath,
    model: ModelName,
    address: RayAddress = None,
    as_json: AsJson = False,
    insecure_no_ray_auth: InsecureNoRayAuth = False,
) -> None:
    """Where the newest rollout of the model stands, its steps, and each version's requests, errors and latency (and
    a shadow's agreement) as the ingress counted them."""
    spec, address = _open(spec_path, model, address, insecure_no_ray_auth)
    with open_registry() as store:
        rollout = _active(store, spec, model, address)
        events = store.rollout_events(rollout.id)
    with ray_notices_on_stderr():
        versions = _live_versions(address, rollout) if rollout.active else {}
    report = {
        **rollout.model_dump(mode="json", exclude={"plan"}),
        "controller_alive": _controller_alive(rollout),
        "steps": rollout.plan.get("steps"),
        "versions": versions,
        "events": [e.model_dump(mode="json") for e in events],
    }
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print(
        f"rollout #{rollout.id} of {rollout.app}/{rollout.model}: {rollout.strategy} {rollout.baseline_version} -> "
        f"{rollout.candidate_version}, {rollout.state} at step {rollout.step + 1}/{len(rollout.plan['steps'])} "
        f"({rollout.weight:g}%)" + (f": {rollout.reason}" if rollout.reason else ""),
        markup=False,
    )
    for version, stats in versions.items():
        out.print(f"  version {version}: " + ", ".join(f"{k} {v}" for k, v in stats.items()), markup=False)
    for event in events:
        out.print(
            f"  {event.at:%H:%M:%S} {event.kind:<12} {json.dumps(event.detail)[:100]}  ({event.actor})", markup=False
        )


def _live_versions(address: str, rollout) -> dict[str, dict]:
    """Each version's tallies from the desk (summed over the ingress replicas), as a table row."""
    import ray

    from serve_apps.deploy import RayTarget
    from serve_apps.rollout import VersionTally, find_desk

    target = RayTarget.connect(address)
    try:
        desk = find_desk(rollout.app)
        found = ray.get(desk.tallies.remote(rollout.model), timeout=30) if desk is not None else {}
    finally:
        target.disconnect()
    rows = {}
    for version, data in sorted(found.items()):
        if version not in (rollout.baseline_version, rollout.candidate_version):
            continue  # an earlier rollout's candidate, still in the ingress replicas' tallies
        tally = VersionTally.from_dict(data)
        p50, p95 = tally.quantile_s(0.5), tally.quantile_s(0.95)
        row: dict[str, Any] = {
            "requests": tally.requests,
            "errors": tally.errors,
            "error_rate": round(tally.error_rate, 4),
            "p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "p95_ms": round(p95 * 1000, 1) if p95 is not None else None,
        }
        if tally.shadowed:
            row |= {
                "shadowed": tally.shadowed,
                "shadow_errors": tally.shadow_errors,
                "agreement": round(tally.shadow_rows_agreed / tally.shadow_rows, 4) if tally.shadow_rows else None,
                "max_abs_diff": tally.shadow_max_abs_diff,
            }
        rows[version] = row
    return rows


def _act(
    spec_path: Path, model: str, address: str | None, insecure_no_ray_auth: bool, action: Callable[..., None]
) -> None:
    spec, address = _open(spec_path, model, address, insecure_no_ray_auth)
    with registry_events(ROLLOUT_SOURCE) as send, open_registry() as store:
        action(store, spec, address, _active(store, spec, model, address), send)


@app.command("pause")
def rollout_pause(
    spec_path: AppPath, model: ModelName, address: RayAddress = None, insecure_no_ray_auth: InsecureNoRayAuth = False
) -> None:
    """Hold the rollout at its step: the split stays, nothing is judged until `resume`."""

    def pause(store, spec, address, rollout, send) -> None:
        store.update_rollout(rollout.id, expect=("running",), state="paused", event=("paused", {}))
        send("rollout.paused", {"rollout": rollout.id}, f"{rollout.app}/{rollout.model}")
        out.print(f"rollout #{rollout.id} paused at {rollout.weight:g}%", markup=False)

    _act(spec_path, model, address, insecure_no_ray_auth, pause)


@app.command("resume")
def rollout_resume(
    spec_path: AppPath, model: ModelName, address: RayAddress = None, insecure_no_ray_auth: InsecureNoRayAuth = False
) -> None:
    """Go on with a paused rollout, or carry on one whose `rollout start` was stopped: this command drives it then."""

    def resume(store, spec, address, rollout, send) -> None:
        rollout = store.update_rollout(rollout.id, expect=("running", "paused"), state="running", event=("resumed", {}))
        send("rollout.resumed", {"rollout": rollout.id}, f"{rollout.app}/{rollout.model}")
        if _controller_alive(rollout):
            out.print(f"rollout #{rollout.id} resumed; {rollout.controller} drives it", markup=False)
            return
        with _connected(address, spec) as cluster:
            _drive(store, cluster, rollout, send)

    _act(spec_path, model, address, insecure_no_ray_auth, resume)


@app.command("promote")
def rollout_promote(
    spec_path: AppPath, model: ModelName, address: RayAddress = None, insecure_no_ray_auth: InsecureNoRayAuth = False
) -> None:
    """Promote the candidate now, whatever step it is at."""

    def promote(store, spec, address, rollout, send) -> None:
        if not rollout.active:
            bad_input(f"rollout #{rollout.id} is {rollout.state}: nothing to promote")
        with _connected(address, spec) as cluster:
            _Rollout(store, cluster, rollout, send).promote()

    _act(spec_path, model, address, insecure_no_ray_auth, promote)


@app.command("abort")
def rollout_abort(
    spec_path: AppPath, model: ModelName, address: RayAddress = None, insecure_no_ray_auth: InsecureNoRayAuth = False
) -> None:
    """End the rollout now: every request back to the baseline, the candidate removed."""

    def abort(store, spec, address, rollout, send) -> None:
        if not rollout.active:
            bad_input(f"rollout #{rollout.id} is {rollout.state}: nothing to abort")
        with _connected(address, spec) as cluster:
            _Rollout(store, cluster, rollout, send)._take_back("aborted", "aborted by an operator")

    _act(spec_path, model, address, insecure_no_ray_auth, abort)
