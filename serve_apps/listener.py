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

The port may face a hostile network, so every connection is bounded
(`Limits`): its request line and headers must arrive within
`header_timeout_s`, its body within `body_timeout_s`, headers and URL have a
size cap, and connections beyond `max_connections` are closed at once. Plain
uvicorn waits forever for a slow or silent client: a few hundred idle
sockets would exhaust the replica's file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["Limits", "Listener", "Tls"]

logger = logging.getLogger("ray.serve")

# In-flight requests get this long to finish when the replica stops (Serve's own default grace is 20 s).
GRACEFUL_SHUTDOWN_S = 15


BACKLOG = 2048
DRAIN_IDLE_S = 1.0  # how long an idle keep-alive connection may still bring a request once the server stops
MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1024


@dataclass(frozen=True)
class Tls:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: clients must present a certificate it signed (mTLS)


def _bounded_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, with a deadline over each request's arrival and size caps."""

    class Bounded(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _refused = False  # answered by _refuse: the parser's remaining callbacks for this request are moot
        _draining = False  # the server is stopping: each connection answers at most one more request

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()  # the app's receive() then reports a disconnect

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.close()  # accepted only to be closed: the descriptor comes back at once
                return
            self._arm(limits.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            self._header_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            if self._refused:
                return
            if len(self.url) + len(url) > MAX_URL_BYTES:
                self._refuse(414, b"URI Too Long")
                return
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._refused:
                return
            self._header_bytes += len(name) + len(value)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(431, b"Request Header Fields Too Large")
                return
            super().on_header(name, value)

        def _refuse(self, status: int, reason: bytes) -> None:
            self._refused = True
            if not self.transport.is_closing():
                body = b'{"error":"' + reason.lower() + b'"}'
                self.transport.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: "
                    b"close\r\n\r\n%s" % (status, reason, len(body), body)
                )
                self.transport.close()

        def on_headers_complete(self) -> None:
            if self._refused:
                return
            self._arm(limits.body_timeout_s)
            super().on_headers_complete()
            if self._draining and self.cycle is not None:
                self.cycle.keep_alive = False  # answered with Connection: close, then closed

        def shutdown(self) -> None:
            """The server is stopping (e.g. a rolling update replaced this replica).

            uvicorn closes idle keep-alive connections at once, failing any
            request a client is sending on one at that moment. Instead an idle
            connection gets a moment to bring one last request, answered with
            `Connection: close`; in-flight requests finish as before.
            """
            self._draining = True
            if self.cycle is None or self.cycle.response_complete:
                self._arm(DRAIN_IDLE_S)
            else:
                self.cycle.keep_alive = False

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._refused:
                return
            self._disarm()  # the app has the whole request; its own deadline (request_timeout_s) applies now
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.pipeline and not self.transport.is_closing():
                self._arm(limits.header_timeout_s)  # the next request, if any, must arrive in time too

    return Bounded


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the process is a Ray worker: its signals are Ray's


class Listener:
    """Binds and listens at once (so a taken port fails the replica's constructor); accepts once the replica is
    ready."""

    def __init__(self, app: ASGIApp, host: str, port: int, limits: Limits = Limits(), tls: Tls | None = None):
        self.host, self.port = host, port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.sock.bind((host, port))
            # Listening at once joins the port's SO_REUSEPORT group: from here on the kernel queues this
            # replica's share of new connections until it accepts them. Were it to listen only when ready,
            # a rolling update could stop the old replica first, and the port would refuse connections.
            self.sock.listen(BACKLOG)
        except OSError as exc:
            self.sock.close()
            raise RuntimeError(f"the ingress cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        # log_config=None: uvicorn must not reconfigure the logging of the Ray worker it lives in.
        tls_options: dict[str, Any] = {}
        if tls is not None:
            tls_options = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
            if tls.client_ca_file:
                tls_options |= {"ssl_ca_certs": tls.client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            http=_bounded_protocol(limits),
            **tls_options,
        )
        self.scheme = "https" if tls is not None else "http"
        self.server = _Server(config)
        self._task: asyncio.Task | None = None

    def start(self, ready: Callable[[], bool]) -> None:
        """Serve on the running loop once `ready()` holds (a bound socket refuses connections until then)."""
        self._task = asyncio.get_running_loop().create_task(self._serve(ready))

    async def _serve(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await asyncio.sleep(0.05)
        logger.info("ingress listening on %s://%s:%s", self.scheme, self.host, self.port)
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
