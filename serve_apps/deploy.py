"""Deploy apps onto Ray: an embedded loopback-only Ray (`modelfleet run`) or a running cluster (`deploy`).

The CLI owns the display; this module reports progress through callbacks so
that it stays testable and free of terminal concerns.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from groundwork.local_rays import default_ray_address, live_rays
from groundwork.net import is_loopback_host
from groundwork.ray_env import LOOPBACK_ONLY_ENV, secure_ray_token, set_env_defaults
from providers.storage import fetch

from .auth import KeyRing
from .preflight import PreflightFailed, preflight
from .spec import AppSpec
from .traffic import candidate_deployment

__all__ = [
    "DeployFailed",
    "DeploymentRow",
    "RAY_SERVE_SPEED_ENV",
    "RayTarget",
    "connect",
    "prefetch_artifacts",
    "prepare_ray_env",
]

# Ray Serve's own throughput options (what RAY_SERVE_THROUGHPUT_OPTIMIZED turns on, minus its direct
# ingress: the ingress has its own listener): gRPC between replicas, user code and router on the
# replica's event loop rather than extra threads, garbage collector frozen after start-up.
# Environment variables, so they reach Ray's workers; a value already set wins.
RAY_SERVE_SPEED_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
    # Workers default to niceness 15; on a small box a co-located client starves them.
    "RAY_worker_niceness": "0",
}
# Progress bars from model libraries (transformers' "Loading weights") in replicas' output, which `run` shows.
QUIET_CONSOLE_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
StatusCallback = Callable[[str, dict[str, str]], None]
# The version being put back ran a moment ago: its replicas get this long to come back, however short the
# timeout the new version was given (a rollback cut short by it would leave the app dark).
ROLLBACK_TIMEOUT_S = 120.0
# Replicas log model loads and errors (with request ids); per-request access logs would drown them.
APP_LOGGING = {"enable_access_log": False, "log_level": "INFO"}


def is_loopback(address: str) -> bool:
    """Is this `host:port` (or bare host) a loopback address?"""
    return is_loopback_host(address.rpartition(":")[0] or address)


class DeployFailed(Exception):
    """The application did not reach RUNNING; the message carries Serve's reason."""


def prefetch_artifacts(
    spec: AppSpec, progress: Callable[[str, int, int | None], None] | None = None
) -> dict[str, Path]:
    """Fetch every artifact into the local cache before Ray starts.

    Replicas on this machine then load from the cache at once, and download
    progress is shown where the user is looking rather than in replica logs.
    """
    paths: dict[str, Path] = {}
    for _, model, artifact, candidate in spec.resolved().artifacts():
        if model.multiplex is not None:
            continue  # a multiplexed family's models are fetched by the replica that first needs each
        name = model.name if candidate is None else candidate_deployment(model.name, str(candidate.version))
        callback = (lambda done, total, name=name: progress(name, done, total)) if progress else None
        paths[name] = fetch(artifact.uri, sha256=artifact.sha256, progress=callback)
    return paths


def _last_error_line(message: str) -> str:
    """Serve's messages end with the replica's whole traceback; the cause is its last line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[-1]} (full traceback in the replica's log)"
    text = " ".join(lines)
    if "Traceback (most recent call last)" in text:  # a rolling update's message carries it on one line
        summary = text.split(" Error: ", 1)[0]
        cause = re.findall(
            r"\b([A-Za-z_]\w*(?:Error|Exception): .*?)(?=$| \S+:\s|$)",
            text.rsplit("Traceback (most recent call last)", 1)[1],
        )
        return f"{summary} Cause: {cause[-1] if cause else 'see the replica log'} (full traceback in the replica's log)"
    return text


def _probe(address: str) -> None:
    """Ray retries an unreachable GCS for minutes; a TCP probe says so in seconds."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local", ray:// ...: Ray resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address} ({exc.strerror or exc}); is the cluster up?") from None


def _reasons(overview) -> str:
    """What Serve says about each deployment of an application (its StatusOverview), one clause each."""
    return "; ".join(f"{d.name}: {_last_error_line(d.message)}" for d in overview.deployment_statuses if d.message)


def _app_status(name: str):
    """Serve's StatusOverview of one application (None: there is none): what a deploy watches, four times a second.

    `serve.status()` would say the same, but its controller first gathers the details of every application,
    deployment and replica of the cluster (the test fleet's 20 deployments: most of a deploy's polling time)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    overview = client.get_serve_status(name) if client is not None else None
    return None if overview is None or overview.app_status.status.value == "NOT_STARTED" else overview


Listen = tuple[str, int]


def _apply(spec: AppSpec, keys: KeyRing | None, gpus_in_cluster: float | None, listen: Listen | None) -> None:
    """Hand the app to Serve without waiting: callers watch it come up (or not)."""
    from ray import serve
    from ray.serve.api import RunTarget

    from .build import build_app

    app = build_app(spec, gpus_in_cluster=gpus_in_cluster, keys=keys, listen=listen)
    serve.run_many(
        [RunTarget(target=app, name=spec.name, route_prefix=spec.route_prefix, logging_config=APP_LOGGING)],
        wait_for_applications_running=False,
    )


def _describe(app_name: str) -> dict | None:
    """The running app's spec, key hashes and listen address, if modelfleet deployed it (else None: no rollback)."""
    from ray import serve

    try:
        return serve.get_app_handle(app_name).describe.remote().result(timeout_s=30)
    except Exception:  # not a modelfleet app, or its ingress is down: nothing to roll back to
        return None


def _text(value: object) -> str:
    """Serve's status fields are enums or plain strings depending on the path; show either."""
    return str(getattr(value, "value", value))


def prepare_ray_env(address: str | None = None) -> None:
    """Set what Ray reads once, when first imported: call it before anything in this process may import Ray (the
    models' modules, which the CLI imports to check them). `address` None: the embedded Ray of `run`."""
    if address is None:
        set_env_defaults({**RAY_SERVE_SPEED_ENV, **LOOPBACK_ONLY_ENV, **QUIET_CONSOLE_ENV})
        return
    secure_ray_token()
    # Ray 2.60 heads enable token auth by default; a client must opt in to send the token.
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    token_available = (
        os.environ.get("RAY_AUTH_TOKEN") or (Path(named) if named else Path.home() / ".ray" / "auth_token").exists()
    )
    if token_available and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
    if is_loopback(address):
        # A loopback cluster (`modelfleet run`, local-sim) runs in Ray's single-machine mode; a driver
        # must too, or it looks for a raylet at the machine's other address and waits forever.
        set_env_defaults(LOOPBACK_ONLY_ENV)


@dataclass(frozen=True)
class DeploymentRow:
    app: str
    app_status: str
    deployment: str
    status: str
    replicas: dict[str, int]
    message: str
    nodes: dict[str, int] = field(default_factory=dict)  # running replicas per node address, where Ray says


class RayTarget:
    """A Ray cluster that this process is connected to, and what it can do with Serve there."""

    def __init__(self, gpus_known: bool, can_add_nodes: bool = True):
        # On an autoscaling cluster, GPUs may appear on demand: only a local run may downgrade to CPU.
        self.gpus_known = gpus_known
        # False where no autoscaler can add a node (the Ray of a `modelfleet run`): an app that does not fit
        # fails at once rather than waiting out the timeout.
        self.can_add_nodes = can_add_nodes
        # Where an app's ingress serves HTTP itself when the caller names no address (None: Serve's proxies).
        self.default_listen: Listen | None = None

    @classmethod
    def connect(cls, address: str, py_modules: list[str] | None = None) -> RayTarget:
        """Join the Ray at `address` as a driver. `py_modules`: package folders that every replica this driver
        deploys imports from (Ray ships them through its GCS), rather than from what its node has installed."""
        prepare_ray_env(address)
        _probe(address)
        _in_own_thread(_join_ray, address, {"py_modules": py_modules} if py_modules else None)
        secure_ray_token()
        embedded_run = any(r.kind == "run" and r.ray_address == address for r in live_rays())
        return cls(gpus_known=False, can_add_nodes=not embedded_run)

    @property
    def address(self) -> str:
        import ray

        return ray.get_runtime_context().gcs_address

    def deploy(
        self,
        spec: AppSpec,
        keys: KeyRing | None = None,
        on_status: StatusCallback | None = None,
        timeout_s: float = 600,
        listen: Listen | None = None,
        proven: bool = False,
    ) -> None:
        """Deploy (or update) and wait until RUNNING; raise DeployFailed with Serve's reason otherwise.

        Serve alone would replace a live app's replicas even with ones that
        cannot start, leaving the app dark. So an update is preflighted first,
        and if it passes but still does not run, the previous version is redeployed.
        `listen`: the ingress serves HTTP on (host, port) itself; an update
        without one keeps the address the running version listens on.
        `proven`: every model of `spec` already serves on this cluster as it is (a rollout's promotion: the app as it
        runs, with the candidate that has answered its share of requests): no preflight, which would load it again.
        """
        import ray
        from ray import serve
        from ray.serve.exceptions import RayServeException

        previous = None
        if spec.name in serve.status().applications:  # an update: prove the new version before Serve swaps it in
            if not proven:
                try:
                    preflight(spec, timeout_s=timeout_s)
                except PreflightFailed as exc:
                    raise DeployFailed(f"the new version failed its preflight, so it was not deployed: {exc}") from None
            previous = _describe(spec.name)
        # The running ingress reports {"host", "port"}: an update keeps listening where it does.
        previous_listen = (
            (previous["listen"]["host"], previous["listen"]["port"]) if previous and previous.get("listen") else None
        )
        gpus = float(ray.cluster_resources().get("GPU", 0)) if self.gpus_known else None
        if previous is None:
            _check_route_prefix(spec, serve.status().applications)
            if not self.can_add_nodes:
                _check_room(spec, float(ray.available_resources().get("CPU", 0)))
        try:
            _apply(spec, keys, gpus, listen or self.default_listen or previous_listen)
        except RayServeException as exc:
            holder = re.search(r'Prefix (\S+) is being used by application "([^"]+)"', str(exc))
            if holder is None:
                raise
            raise _prefix_taken(spec, holder[2], holder[1]) from None  # an app not of modelfleet's
        try:
            self._wait_running(spec.name, on_status, timeout_s)
        except DeployFailed as exc:
            if previous is None:
                raise
            # Put the last version that ran back, rather than leave the app dark.
            _apply(
                AppSpec.model_validate(previous["spec"]), KeyRing.from_hashes(previous["keys"]), gpus, previous_listen
            )
            try:
                self._wait_running(spec.name, None, max(timeout_s, ROLLBACK_TIMEOUT_S))
            except DeployFailed as again:
                raise DeployFailed(f"{exc}; the rollback to the previous version failed too: {again}") from None
            raise DeployFailed(f"{exc}; rolled back to the previous version, which is serving") from None

    @staticmethod
    def _wait_running(name: str, on_status: StatusCallback | None, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            status = _app_status(name)
            if status is not None:
                app = status.app_status
                if on_status:
                    on_status(app.status.value, {d.name: d.status.value for d in status.deployment_statuses})
                if app.status.value == "RUNNING":
                    return
                if app.status.value in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise DeployFailed(_reasons(status) or app.message or app.status.value)
            if time.monotonic() > deadline:
                why = _reasons(status) if status else ""
                raise DeployFailed(
                    f"application {name!r} not running after {timeout_s:.0f}s" + (f" ({why})" if why else "")
                )
            time.sleep(0.25)  # a question about one app: cheap for Serve's controller

    def status(self) -> list[DeploymentRow]:
        from ray import serve

        rows = []
        placed = _replica_nodes()
        for app_name, app in sorted(serve.status().applications.items()):
            for name, dep in sorted(app.deployments.items()):
                replicas = {_text(state): count for state, count in dep.replica_states.items() if count}
                nodes = placed.get((app_name, name), {})
                rows.append(
                    DeploymentRow(
                        app_name,
                        _text(app.status),
                        name,
                        _text(dep.status),
                        replicas,
                        _last_error_line(dep.message),
                        nodes,
                    )
                )
        return rows

    def proxy_host(self) -> str:
        """Where Serve's proxies listen on this Ray (once Serve runs): `serve.start` keeps a running Serve's
        http_options whatever it is given, so a deploy must ask. (Serve's client holds them; no public API does.)"""
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is None:
            raise RuntimeError("Serve is not running on this Ray")
        return str(client.http_config.host)

    def disconnect(self) -> None:
        import ray

        ray.shutdown()


def _replica_nodes() -> dict[tuple[str, str], dict[str, int]]:
    """Alive Serve replicas per (app, deployment), counted per node address, from Ray's state API (which needs the
    dashboard: empty where a Ray runs without one, as `modelfleet run`'s does)."""
    import ray
    from ray._private.worker import get_dashboard_url
    from ray.util.state import list_actors

    if not get_dashboard_url():  # no dashboard: the state API would wait out its timeout, and more
        return {}
    try:
        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, timeout=5, raise_on_missing_output=False)
    except Exception:  # no dashboard, or it does not answer: the counts above still hold  # noqa: BLE001
        return {}
    address_of = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    placed: dict[tuple[str, str], dict[str, int]] = {}
    for actor in actors:
        kind, _, rest = (actor.class_name or "").partition(":")
        app, _, deployment = rest.partition(":")
        if kind == "ServeReplica" and deployment:
            counts = placed.setdefault((app, deployment), {})
            where = address_of.get(actor.node_id or "", actor.node_id or "unknown")
            counts[where] = counts.get(where, 0) + 1
    return placed


def connect(address: str | None = None) -> RayTarget:
    """Connect this process to a Ray that serves modelfleet apps, as a driver; then Serve's handles work here.

    With no address: RAY_ADDRESS, else the one `modelfleet run` or local-sim cluster on this machine (NoRayFound
    says what to pass otherwise). Call it before importing Ray: it sets what Ray's client reads once on import
    (token auth, and for a loopback Ray the single-machine mode, without which the driver waits forever).
    """
    address = address or default_ray_address()
    single_machine = all(os.environ.get(name) == value for name, value in LOOPBACK_ONLY_ENV.items())
    if "ray" in sys.modules and is_loopback(address) and not single_machine:
        # Ray read its mode on import and would look for this Ray at the machine's other address, for ever.
        raise RuntimeError(
            "serve_apps.connect() must run before `import ray` (or set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 first): "
            f"a driver of the loopback-only Ray at {address} needs Ray's single-machine mode, read on import"
        )
    return RayTarget.connect(address)


def _prefix_taken(spec: AppSpec, holder: str, prefix: str) -> DeployFailed:
    return DeployFailed(
        f"route prefix {prefix} is taken by app {holder!r} on this Ray; give {spec.name!r} a route_prefix of its "
        f"own in its spec (e.g. route_prefix: /{spec.name})"
    )


def _check_route_prefix(spec: AppSpec, apps: Iterable[str]) -> None:
    """Fail before deploying when a modelfleet app already serves under this app's route prefix."""
    for name in apps:
        described = _describe(name) if name != spec.name else None
        if described and described["spec"].get("route_prefix", "/") == spec.route_prefix:
            raise _prefix_taken(spec, name, spec.route_prefix)


def _check_room(spec: AppSpec, free_cpus: float) -> None:
    """Fail now, in one line, when the app's first replicas need more CPUs than a fixed-size Ray has free."""
    needs = spec.cpus_at_start()
    total = sum(needs.values())
    if total > free_cpus + 1e-9:
        parts = ", ".join(f"{name} {cpus:g}" for name, cpus in needs.items())
        raise DeployFailed(
            f"app {spec.name!r} needs {total:g} CPUs for its first replicas ({parts}) and this Ray has {free_cpus:g} "
            "free, with no autoscaler to add a node; stop another app, or lower num_cpus or initial replicas"
        )


def _join_ray(address: str, runtime_env: dict | None = None) -> None:
    import ray

    # Ray's notices to a driver (among them that this thread leaves SIGTERM alone, on purpose) are not news.
    logging.getLogger("ray").setLevel(logging.ERROR)
    # Serve gives the driver's runtime_env to every deployment that sets none of its own: the replicas' code.
    # The cluster's logs stay in its log files: a driver that deploys or calls models has its own lines to print.
    ray.init(address=address, logging_level=logging.ERROR, runtime_env=runtime_env, log_to_driver=False)
    quiet_serve_driver_log()


def quiet_serve_driver_log() -> None:
    """Serve's INFO lines in a driver ("Started Serve in namespace", "Connecting to existing Serve app ...
    New http_options/controller_options will not be applied") say nothing our own lines do not; warnings stay.
    After `import ray.serve`, which sets its logger to INFO."""
    from ray import serve  # noqa: F401

    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def _in_own_thread(action: Callable[..., object], *args: object) -> None:
    """Run `action` in a thread and wait for it, re-raising what it raised.

    For `ray.init` as a driver: called from the main thread, it replaces SIGTERM's default action with a Python
    handler, which cannot run while Ray's core waits holding the GIL (an unreachable GCS), so `kill` would not end
    the process. From another thread, Ray leaves SIGTERM alone.
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            action(*args)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="ray-connect", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
