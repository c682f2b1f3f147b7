"""Serve an app on an embedded, loopback-only Ray: the engine of `modelfleet run`.

The CLI owns the display; this module reports progress through callbacks so
that it stays testable and free of terminal concerns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from providers.storage import fetch

from .spec import AppSpec

__all__ = ["DeployFailed", "LocalServer", "prefetch_artifacts"]

StatusCallback = Callable[[str, dict[str, str]], None]
# Replicas log model loads and errors (with request ids); per-request access logs would drown them.
APP_LOGGING = {"enable_access_log": False, "log_level": "INFO"}


class DeployFailed(Exception):
    """The application did not reach RUNNING; the message carries Serve's reason."""


def prefetch_artifacts(spec: AppSpec, progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Path]:
    """Fetch every artifact into the local cache before Ray starts.

    Replicas on this machine then load from the cache at once, and download
    progress is shown where the user is looking rather than in replica logs.
    """
    paths: dict[str, Path] = {}
    for model in spec.resolved().models:
        if model.artifact is None:
            continue
        callback = (lambda done, total, name=model.name: progress(name, done, total)) if progress else None
        paths[model.name] = fetch(model.artifact.uri, sha256=model.artifact.sha256, progress=callback)
    return paths


def _last_error_line(message: str) -> str:
    """Serve's messages end with the replica's whole traceback; the cause is its last line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[-1]} (full traceback above)"
    return " ".join(lines)


@dataclass
class LocalServer:
    """One embedded Ray with Serve's HTTP proxy on host:port."""

    host: str = "127.0.0.1"
    port: int = 8000

    def start(self, pools: set[str] = frozenset()) -> None:
        """Start Ray; this one node advertises every pool in `pools`, so placement holds locally too."""
        import ray
        from ray import serve

        from .build import pool_resource

        # Workers default to niceness 15; on a small box a co-located client starves them.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            resources={pool_resource(p): 1000 for p in pools},
            logging_level="WARNING",
            configure_logging=True,
        )
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": self.host, "port": self.port},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},  # controller and proxy chatter
        )

    @property
    def gpus(self) -> float:
        import ray

        return float(ray.cluster_resources().get("GPU", 0))

    def deploy(self, spec: AppSpec, keys=None, on_status: StatusCallback | None = None, timeout_s: float = 600) -> None:
        """Deploy and wait until every model is RUNNING; raise DeployFailed with Serve's message otherwise."""
        from ray import serve
        from ray.serve.api import RunTarget

        from .build import build_app

        app = build_app(spec, gpus_in_cluster=self.gpus, keys=keys)
        serve.run_many(
            [RunTarget(target=app, name=spec.name, route_prefix=spec.route_prefix, logging_config=APP_LOGGING)],
            wait_for_applications_running=False,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            status = serve.status().applications.get(spec.name)
            if status is not None:
                states = {name: d.status.value for name, d in status.deployments.items()}
                if on_status:
                    on_status(status.status.value, states)
                if status.status.value == "RUNNING":
                    return
                if status.status.value in ("DEPLOY_FAILED", "UNHEALTHY"):
                    reasons = [f"{n}: {_last_error_line(d.message)}" for n, d in status.deployments.items() if d.message]
                    raise DeployFailed("; ".join(reasons) or status.message or status.status.value)
            if time.monotonic() > deadline:
                raise DeployFailed(f"application {spec.name!r} not running after {timeout_s:.0f}s")
            time.sleep(0.5)

    def stop(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
