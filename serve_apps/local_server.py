"""The embedded Ray of `modelfleet run`: started loopback-only, watched, stopped within Docker's grace period."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from groundwork.ray_env import secure_ray_token

from .deploy import RayTarget, prepare_ray_env, quiet_serve_driver_log
from .local_hop import node_dir

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
    _hop_sockets: Path | None = field(default=None, init=False, repr=False)

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
        self._hop_sockets = node_dir()
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

        if ray.is_initialized():
            try:
                if self.ray_stopped() is None:  # else there is no Serve left to stop gracefully
                    _shut_serve_down(SERVE_SHUTDOWN_GRACE_S)
            finally:
                ray.shutdown()  # stops every process this Ray started, whatever Serve's state
        if self._hop_sockets is not None:  # what replicas that did not stop gracefully left of their local hop
            shutil.rmtree(self._hop_sockets, ignore_errors=True)


def _shut_serve_down(timeout_s: float) -> None:
    """Serve's own shutdown, which lets replicas finish what they hold, bounded by Serve's own timeout: a busy
    controller may take 30 s, and SIGTERM must stop within Docker's 10 s grace period.

    In this thread, not one of its own: a thread still waiting on the controller when ray.shutdown() runs makes Ray's
    core end the whole process with exit code 1 ("The core worker has already been shutdown"). `serve.shutdown` takes
    no timeout; Serve's client does (its client is also what `serve.shutdown` calls).
    """
    from ray.exceptions import RayError
    from ray.serve.context import _get_global_client

    serve_log = logging.getLogger("ray.serve")
    level = serve_log.level
    serve_log.setLevel(logging.ERROR)  # "Controller failed to shut down within ...": ray.shutdown() follows anyway
    try:
        client = _get_global_client(raise_if_no_controller_running=False)
        if client is not None:
            client.shutdown(timeout_s=timeout_s)
    except RayError:
        pass  # no Serve, or its controller already gone: ray.shutdown() stops the rest
    finally:
        serve_log.setLevel(level)


def _core_processes() -> dict[str, psutil.Process]:
    """The GCS and raylet that `ray.init` just started, as children of this process: while they run, Ray does."""
    core = {}
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.name() in ("gcs_server", "raylet"):
                core[child.name()] = child
    return core
