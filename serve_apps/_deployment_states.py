"""What Serve's controller says about this app's deployments, asked at most once per `ttl_s` however often it is read.

Readiness probes read each model's state; coalescing callers (coalescing.py) read how many replicas run, on every
request, without waiting: a stale answer starts one refresh in the background and is used meanwhile. (Serve's
`serve.status()` is not cheap: it builds each deployment's pydantic config, cloudpickling its router class, some 20 ms
of the caller's CPU; callers that only size their calls by it ask every few seconds.)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ray import serve

__all__ = ["DeploymentStates"]


@dataclass
class DeploymentStates:
    """From inside a replica of the app: each deployment's status and running replicas."""

    ttl_s: float = 1.0
    statuses: dict[str, str] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    # Other applications' deployments, by (app, deployment): a rollout's candidate is an application of its own.
    running_elsewhere: dict[tuple[str, str], int] = field(default_factory=dict)
    _at: float = -float("inf")
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _refreshing: asyncio.Task[None] | None = None

    def stale(self) -> bool:
        return time.monotonic() - self._at > self.ttl_s

    async def fresh(self) -> DeploymentStates:
        """Itself, asked again if older than `ttl_s` (one question in flight; the others wait for its answer)."""
        if self.stale():
            async with self._lock:
                if self.stale():
                    await self._ask()
        return self

    def running_replicas(self, name: str, max_age_s: float | None = None, app: str | None = None) -> int | None:
        """Running replicas of `name` (in application `app`, default this one) as last heard (None before the first
        answer); never waits. An answer older than `max_age_s` (default `ttl_s`) starts a refresh in the background."""
        age = time.monotonic() - self._at
        if age > (self.ttl_s if max_age_s is None else max_age_s) and (
            self._refreshing is None or self._refreshing.done()
        ):
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_quietly(), name="serve-status")
        return self.running.get(name) if app is None else self.running_elsewhere.get((app, name))

    async def _refresh_quietly(self) -> None:
        try:
            await self.fresh()
        except Exception:  # the controller is briefly away: keep the last answer, ask again on the next read
            self._at = time.monotonic()

    async def _ask(self) -> None:
        app_name = serve.get_replica_context().app_name
        status = await asyncio.to_thread(serve.status)
        deployments = status.applications[app_name].deployments if app_name in status.applications else {}
        self.statuses = {name: d.status.value for name, d in deployments.items()}
        self.running = {name: _running(d) for name, d in deployments.items()}
        self.running_elsewhere = {
            (app, name): _running(d)
            for app, application in status.applications.items()
            if app != app_name
            for name, d in application.deployments.items()
        }
        self._at = time.monotonic()


def _running(deployment: Any) -> int:
    return sum(n for state, n in deployment.replica_states.items() if getattr(state, "value", state) == "RUNNING")
