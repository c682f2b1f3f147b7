"""The ingress's own HTTP listener: uvicorn inside each ingress replica, on the app's port.

Through Ray's HTTP proxy a request crosses the proxy process and Ray's request
path before the ingress sees it; on a 2-core box that caps an echo at a few
percent of bare uvicorn (BENCHMARKS.md). `modelfleet run` therefore has the
ingress replicas listen on the app's port themselves, the way Ray's own
"direct ingress" does, but on a port the user chose and without Ray's
per-request wrapper. Handles to the model deployments, their autoscaling and
batching are untouched: only the hop in front of the ingress goes.

SO_REUSEPORT lets every ingress replica on a node, and an update's new
replicas next to the old ones, listen on the same port; the kernel spreads
connections among the sockets that listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

__all__ = ["Listener"]

logger = logging.getLogger("ray.serve")

# In-flight requests get this long to finish when the replica stops (Serve's own default grace is 20 s).
GRACEFUL_SHUTDOWN_S = 15


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the process is a Ray worker: its signals are Ray's


class Listener:
    """Binds at once (so a taken port fails the replica's constructor); accepts once the replica is ready."""

    def __init__(self, app: ASGIApp, host: str, port: int):
        self.host, self.port = host, port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise RuntimeError(f"the ingress cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        # log_config=None: uvicorn must not reconfigure the logging of the Ray worker it lives in.
        config = uvicorn.Config(
            app, lifespan="off", access_log=False, log_config=None, log_level="warning",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        self.server = _Server(config)
        self._task: asyncio.Task | None = None

    def start(self, ready: Callable[[], bool]) -> None:
        """Serve on the running loop once `ready()` holds (a bound socket refuses connections until then)."""
        self._task = asyncio.get_running_loop().create_task(self._serve(ready))

    async def _serve(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await asyncio.sleep(0.05)
        logger.info("ingress listening on http://%s:%s", self.host, self.port)
        await self.server.serve(sockets=[self.sock])

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close."""
        if self._task is not None and not self._task.done():
            if self.server.started:
                self.server.should_exit = True
            else:
                self._task.cancel()  # still waiting to be ready: nothing in flight
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(self._task, GRACEFUL_SHUTDOWN_S + 5)
        self.sock.close()
