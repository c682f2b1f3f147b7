"""The monitor: one named Ray actor per Ray cluster that gathers what every replica of every app counts.

Ingress replicas and model replicas push snapshots of their Prometheus registries here (`ReplicaMetrics`, every
PUSH_S); `/metrics` on any ingress replica answers the monitor's merged view (monitoring/metrics_hub.py), so a
scrape counts each request once however many replicas served it, and a stopped replica's counts stay. The monitor
adds what only Serve's controller knows: each model version's replicas (desired and running) and replica starts.

An actor of its own, not a deployment of the app: a redeploy restarts every deployment of an app (Serve's
imperative API gives each a new code version), and the sums must outlive that (a counter that went back would read
as a reset, and Prometheus would count it twice). One for all apps: a process each would cost every app's start a
worker's start, and Ray's stop as many processes to end. It holds no model, asks for no CPU, and forgets an app
gone from Serve for GONE_AFTER_S.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from ray import serve
from ray.serve.exceptions import RayServeException

from monitoring.metrics_hub import MetricsHub, Snapshot, snapshot
from monitoring.status_stats import Totals, totals_by_version, window_stats

from .drift_watch import DriftWatch
from .spec import AppSpec
from .traffic import candidate_deployment

__all__ = ["Monitor", "ReplicaMetrics", "monitor_of"]

logger = logging.getLogger("ray.serve")

MONITOR_NAME, MONITOR_NAMESPACE = "modelfleet-monitor", "modelfleet"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's resource of the head node (ray._common.constants)
PUSH_S = 1.0  # how often a replica hands its counts over (when they changed): a scrape is at most this much behind
KEEPALIVE_S = 5.0  # how often an idle replica says it is alive (the hub retires one silent for 15 s)
CONTROLLER_EVERY_S = 5.0  # how often replicas are counted (the controller's details are not cheap)
HISTORY = 13  # samples of each app's totals, CONTROLLER_EVERY_S apart: the status page's last minute
MAX_TAPPED_ROWS = 5000  # per model version, waiting for the next push
GONE_AFTER_S = 120.0  # an app absent from Serve this long is gone: its monitor ends
ROLLOUT_APP_MARK = "--rollout--"  # rollout.py names a candidate's application {app}--rollout--{model}--{version}


def base_app(app_name: str) -> str:
    """The app whose monitor counts a replica of `app_name` (a rollout's candidate counts in its app's)."""
    return app_name.split(ROLLOUT_APP_MARK, 1)[0]


def monitor_of() -> Any:
    """A handle to the cluster's monitor, started if none runs (blocking: call it from a thread)."""
    import ray

    actor = ray.remote(Monitor).options(
        name=MONITOR_NAME,
        namespace=MONITOR_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        # On the head, which is always there: anywhere else it would keep an autoscaled node from going idle.
        resources={HEAD_NODE_RESOURCE: 0.001},
        max_restarts=-1,  # a crashed monitor comes back (its sums then start again: a reset Prometheus expects)
    )
    return actor.remote()


class ReplicaMetrics:
    """A replica's own registry, pushed to its app's monitor every PUSH_S from the replica's event loop."""

    def __init__(
        self,
        kind: str,
        registry: CollectorRegistry | None = None,
        app_spec: dict | None = None,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        """`app_spec`: the app's spec, told to the monitor when first reached (by ingress replicas: they have it).
        `refresh`: brings the registry up to date before each snapshot (counts kept elsewhere, e.g. by a thread)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self._refresh = refresh
        self._app_spec = app_spec
        self.source = f"{kind}:{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self._monitor: Any = None
        self._app = ""
        self._pushed: Snapshot = ()
        self._pushed_at = -float("inf")
        # Inputs of models watched for drift (`tap`), handed to the monitor with each push; bounded.
        self._tapped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._tapped_rows: dict[tuple[str, str], int] = {}
        self.tap_dropped = Counter(
            "modelfleet_drift_rows_dropped",
            "Rows tapped for drift detection but dropped: the monitor did not take them in time.",
            ["model", "version"],
            registry=self.registry,
        )

    def tap(self, model: str, version: str, inputs: dict[str, Any], rows: int) -> None:
        """A request's inputs for the monitor's drift windows (sent with the next push; beyond MAX_TAPPED_ROWS
        waiting, dropped and counted: the request path never waits for the monitor)."""
        key = (model, version)
        waiting = self._tapped_rows.get(key, 0)
        if waiting + rows > MAX_TAPPED_ROWS:
            self.tap_dropped.labels(model, version).inc(rows)
            return
        self._tapped.setdefault(key, []).append(inputs)
        self._tapped_rows[key] = waiting + rows

    def start_pushing(self) -> None:
        """From a Serve replica's constructor or event loop (idempotent; elsewhere, e.g. a model loaded by a test,
        nothing)."""
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
            self._app = base_app(serve.get_replica_context().app_name)
        except (RuntimeError, RayServeException):  # no event loop, or not in a Serve replica
            return
        self._task = loop.create_task(self._push_forever(), name="metrics-push")

    async def monitor(self) -> Any:
        """The app's monitor (looked up, or started, once)."""
        if self._monitor is None:
            monitor = await asyncio.to_thread(monitor_of)
            if self._app_spec is not None:
                await monitor.describe.remote(self._app, self._app_spec)
            self._monitor = monitor
        return self._monitor

    def snapshot(self) -> Snapshot:
        if self._refresh is not None:
            self._refresh()
        return snapshot(self.registry)

    async def push(self, force: bool = True) -> None:
        """Hand the monitor this replica's counts; unless `force`, only when they changed since the last push, else
        a keep-alive every KEEPALIVE_S (most replicas are idle most of the time)."""
        monitor = await self.monitor()
        families = self.snapshot()
        now = time.monotonic()
        if force or families != self._pushed or now - self._pushed_at >= KEEPALIVE_S:
            await monitor.push.remote(self._app, self.source, families)
            self._pushed, self._pushed_at = families, now
        if self._tapped:
            tapped, self._tapped, self._tapped_rows = self._tapped, {}, {}
            await monitor.observe.remote(self._app, tapped)

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(PUSH_S)
            try:
                await self.push(force=False)
            except Exception as exc:  # the monitor is restarting: the next push catches up
                logger.debug("metrics push: %s", exc)
                self._monitor = None

    def goodbye_soon(self) -> asyncio.Task[None] | None:
        """`goodbye` in a task of the running loop (None where nothing was pushed or no loop runs): from a `__del__`
        that the garbage collector may call too (a task never awaited is no warning; a coroutine would be)."""
        if self._task is None:
            return None
        try:
            return asyncio.get_running_loop().create_task(self.goodbye(), name="metrics-goodbye")
        except RuntimeError:
            return None

    async def goodbye(self) -> None:
        """The replica is stopping: a last push and retirement, so nothing it counted is lost."""
        if self._task is not None:
            self._task.cancel()
        if not self._app:
            return
        try:
            monitor = await self.monitor()
            await monitor.push.remote(self._app, self.source, self.snapshot())
            await monitor.retire.remote(self._app, self.source)
        except Exception as exc:
            logger.debug("metrics goodbye: %s", exc)


class AppMonitor:
    """One app's part of the monitor: its replicas' metrics merged, its models' replicas counted, its drift."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.hub = MetricsHub(app)
        # deployment -> (model, version), as the ingress replicas tell (`describe`): each model's own deployment and
        # its spec's candidates. A rollout's candidate is NAME@VERSION in an application of its own.
        self.versions: dict[str, tuple[str, str]] = {}
        self.last_seen = time.monotonic()
        self.registry = CollectorRegistry()
        self.drift = DriftWatch(app, self.registry)
        self.replicas = Gauge(
            "modelfleet_replicas",
            "Replicas of a model version, by state: desired (the autoscaler's target) and running.",
            ["model", "version", "state"],
            registry=self.registry,
        )
        self.replica_starts = Counter(
            "modelfleet_replica_starts",
            "Replicas of a model version that started (scale-ups, restarts and rolling updates).",
            ["model", "version"],
            registry=self.registry,
        )
        self._seen_replicas: set[str] = set()
        self.replica_counts: dict[tuple[str, str], dict[str, float]] = {}  # as the gauge says, for the status page
        # (when, totals per version) every CONTROLLER_EVERY_S: the status page's last minute (status_stats.py).
        self.history: collections.deque[tuple[float, dict[tuple[str, str], Totals]]] = collections.deque(maxlen=HISTORY)

    def sample(self) -> None:
        self.hub.set_own(snapshot(self.registry))
        self.history.append((time.monotonic(), totals_by_version(self.hub.merged())))

    def status(self) -> dict[str, Any]:
        """Per model version: replicas, the last minute's req/s, error rate, p50/p95, all-time totals, drift."""
        self.sample()
        (since, before), (now, after) = self.history[0], self.history[-1]
        versions: dict[str, dict[str, Any]] = {}
        for model, version in sorted(set(after) | set(self.versions.values())):  # served, or only deployed
            totals = after.get((model, version), Totals())
            window = window_stats(before.get((model, version), Totals()), totals, now - since)
            versions[f"{model}@{version}"] = {
                "model": model,
                "version": version,
                "replicas": self.replica_counts.get((model, version), {"desired": 0, "running": 0}),
                "window_s": round(now - since, 1),
                "rps": window.rps,
                "error_rate": window.error_rate,
                "p50_ms": window.p50_ms,
                "p95_ms": window.p95_ms,
                "totals": {"requests": totals.requests, "bad": totals.bad, "buckets": totals.buckets},
                "drift": self.drift.state(model, version),
            }
        return {"app": self.app, "versions": versions}

    def describe(self, app_spec: dict) -> None:
        """The app's models and versions as its (newest) spec says: each ingress replica tells on starting."""
        spec = AppSpec.model_validate(app_spec)
        self.drift.describe([*spec.models, *spec.candidate_specs()])
        versions = {m.name: (m.name, m.version) for m in spec.models}
        self.versions = versions | {
            candidate_deployment(c.name, c.version): (c.name, c.version) for c in spec.candidate_specs()
        }

    def exposition(self) -> bytes:
        self.hub.retire_silent()
        self.hub.set_own(snapshot(self.registry))
        return self.hub.exposition()

    def record_replicas(self, applications: dict[str, Any]) -> None:
        """Replicas per model version of this app and of its rollouts' candidates, from the controller's details."""
        self.replicas.clear()
        self.replica_counts = {}
        for app_name, app in applications.items():
            if base_app(app_name) != self.app:
                continue
            for name, deployment in app.get("deployments", {}).items():
                model_version = self.versions.get(name) or _candidate_of(name)
                if model_version is None:
                    continue
                running = 0
                for replica in deployment.get("replicas", []):
                    running += str(getattr(replica.get("state"), "value", replica.get("state"))) == "RUNNING"
                    replica_id = f"{app_name}/{replica.get('replica_id')}"
                    if replica_id not in self._seen_replicas:
                        self._seen_replicas.add(replica_id)
                        self.replica_starts.labels(*model_version).inc()
                counts = {"desired": deployment.get("target_num_replicas", 0), "running": running}
                self.replica_counts[model_version] = counts
                for state, count in counts.items():
                    self.replicas.labels(*model_version, state).set(count)


class Monitor:
    """The Ray cluster's monitor (one named actor, `monitor_of`), with a part per app (`AppMonitor`): one process
    however many apps run, and one question to the controller every CONTROLLER_EVERY_S for all of them."""

    def __init__(self) -> None:
        self.apps: dict[str, AppMonitor] = {}
        self._watching: asyncio.Task[None] | None = None
        self._counted_at = -float("inf")
        self._counting: asyncio.Lock | None = None

    def _app(self, app: str) -> AppMonitor:
        found = self.apps.get(app)
        if found is None:
            found = self.apps[app] = AppMonitor(app)
        if self._watching is None:
            self._watching = asyncio.get_running_loop().create_task(self._watch(), name="monitor-watch")
        return found

    def describe(self, app: str, app_spec: dict) -> None:
        self._app(app).describe(app_spec)
        self._counted_at = -float("inf")  # its models' replicas are counted at the next reading

    def push(self, app: str, source: str, families: Snapshot) -> None:
        self._app(app).hub.push(source, families)

    def retire(self, app: str, source: str) -> None:
        self._app(app).hub.retire(source)

    async def observe(self, app: str, tapped: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
        """Inputs the ingress replicas tapped, per (model, version): into the drift windows (drift_watch.py)."""
        await self._app(app).drift.observe(tapped)

    async def exposition(self, app: str) -> bytes:
        await self._count_replicas()
        return self._app(app).exposition()

    async def status(self, app: str) -> dict[str, Any]:
        """What the app's status page shows (ingress.Ingress.status_page)."""
        await self._count_replicas()
        return self._app(app).status()

    async def _watch(self) -> None:
        """Count replicas and retire silent sources even when nobody scrapes; forget apps gone for GONE_AFTER_S."""
        while True:
            await asyncio.sleep(CONTROLLER_EVERY_S)
            await self._count_replicas()
            for monitor in self.apps.values():
                monitor.hub.retire_silent()
                monitor.sample()

    async def _count_replicas(self) -> None:
        """Replicas per model version, from the controller at most every CONTROLLER_EVERY_S."""
        if self._counting is None:
            self._counting = asyncio.Lock()
        async with self._counting:
            if time.monotonic() - self._counted_at < CONTROLLER_EVERY_S:
                return
            try:
                details = await asyncio.to_thread(_serve_details)
            except Exception as exc:  # the controller is briefly away: keep the last count
                logger.debug("monitor: counting replicas: %s", exc)
                return
            self._counted_at = now = time.monotonic()
            applications = details.get("applications", {})
            for app, monitor in list(self.apps.items()):
                monitor.record_replicas(applications)
                if app in applications:
                    monitor.last_seen = now
                elif now - monitor.last_seen > GONE_AFTER_S:
                    logger.info("app %s is gone: the monitor forgets it", app)
                    del self.apps[app]


def _serve_details() -> dict[str, Any]:
    """What `serve.status()` is built from (Serve's own client, as it asks), with replicas and targets."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None  # raises instead when no controller runs
    return client.get_serve_details()


def _candidate_of(deployment: str) -> tuple[str, str] | None:
    model, at, version = deployment.partition("@")
    return (model, version) if at else None
