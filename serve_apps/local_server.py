"""The embedded Ray of `modelfleet run`: started loopback-only, watched, stopped within Docker's grace period."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Set
from dataclasses import dataclass, field

import psutil

from groundwork.ray_env import secure_ray_token

from .deploy import RayTarget, prepare_ray_env, quiet_serve_driver_log

__all__ = ["SERVE_SHUTDOWN_GRACE_S", "LocalServer"]

# How long `run` lets Serve shut down gracefully before stopping Ray under it.
SERVE_SHUTDOWN_GRACE_S = 6.0


@dataclass
class LocalServer(RayTarget):
    """One embedded Ray on this machine.

    The app `run` serves listens on host:port from its ingress replicas
    (listener.py); Serve's HTTP proxy, for apps deployed onto this Ray
    later, listens on host:proxy_port.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    proxy_port: int = 8001
    _core: dict[str, psutil.Process] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__(gpus_known=True, can_add_nodes=False)
        self.default_listen = (self.host, self.port)  # the app `run` serves listens on its port itself

    def start(self, pools: Set[str] = frozenset()) -> None:
        """Start Ray; this one node advertises every pool in `pools`, so placement holds locally too."""
        # Before Serve is imported: it reads these once, and this process builds the handles the ingress uses.
        if "ray.serve" in sys.modules:
            logging.getLogger("modelfleet").warning(
                "Ray Serve was imported before LocalServer.start: handles keep its defaults"
            )
        prepare_ray_env()
        import ray
        from ray import serve

        from providers.compute import pool_resource

        secure_ray_token()
        ray.init(
            address="local",  # always our own Ray: never join a `ray start` head (or RAY_ADDRESS) found on this machine
            include_dashboard=False,
            resources={pool_resource(p): 1000 for p in pools},
            logging_level=logging.ERROR,  # Ray's notices to a driver (token auth on, ...) are not the user's business
            configure_logging=True,
        )
        secure_ray_token()  # the token ray.init generated, if it did
        self._core = _core_processes()
        quiet_serve_driver_log()
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": self.host, "port": self.proxy_port},
            # The controller's and proxies' notices (e.g. "Cannot deregister autoscaling state") stay in their logs.
            logging_config={"enable_access_log": False, "log_level": "ERROR"},
        )

    def ray_stopped(self) -> str | None:
        """Why this server's Ray is gone (its GCS or raylet exited), or None while both run."""
        for name, process in self._core.items():
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    continue
            return f"Ray's {name} (pid {process.pid}) exited"
        return None

    def stop(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            try:
                if self.ray_stopped() is None:  # else there is no Serve left to stop gracefully
                    # Serve's own shutdown lets replicas finish what they hold, but may wait 30 s on a busy
                    # controller: bounded, so SIGTERM stops within Docker's 10 s grace period.
                    graceful = threading.Thread(target=_quietly(serve.shutdown), name="serve-shutdown", daemon=True)
                    graceful.start()
                    graceful.join(SERVE_SHUTDOWN_GRACE_S)
            finally:
                ray.shutdown()  # stops every process this Ray started, whatever Serve's state


def _quietly(action: Callable[[], object]) -> Callable[[], None]:
    """For a thread whose failure changes nothing (what follows it cleans up anyway): no traceback on the console."""

    def run() -> None:
        with contextlib.suppress(Exception):
            action()

    return run


def _core_processes() -> dict[str, psutil.Process]:
    """The GCS and raylet that `ray.init` just started, as children of this process: while they run, Ray does."""
    core = {}
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.name() in ("gcs_server", "raylet"):
                core[child.name()] = child
    return core
