"""The ingress's own listener against clients that are slow, silent, greedy or oversized; and over TLS.

No Ray: the listener (serve_apps/listener.py) runs on its own event loop in a
thread, serving a tiny ASGI app that reads the body and answers its length.
Deadlines are short here (1 s) so that what would take the default 10 s takes one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serve_apps.listener import Limits, Listener, Tls
from tests.helpers import free_port

DEADLINE_S = 1.0


async def _length_app(scope, receive, send) -> None:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = str(len(body)).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(payload)).encode())]}
    )
    await send({"type": "http.response.body", "body": payload})


@dataclass
class Served:
    port: int
    stopping: Callable[[], concurrent.futures.Future]  # starts Listener.stop() on the listener's loop


def _serve(limits: Limits, tls: Tls | None = None) -> Iterator[Served]:
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Listener] = {}

    async def start() -> None:
        holder["listener"] = listener = Listener(_length_app, "127.0.0.1", port, limits, tls)
        listener.start(ready=lambda: True)
        while not listener.server.started:
            await asyncio.sleep(0.01)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert started.wait(10), "listener did not start"
    stopped: list[concurrent.futures.Future] = []

    def stopping() -> concurrent.futures.Future:
        if not stopped:
            stopped.append(asyncio.run_coroutine_threadsafe(holder["listener"].stop(), loop))
        return stopped[0]

    try:
        yield Served(port, stopping)
    finally:
        stopping().result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    for served in _serve(Limits(header_timeout_s=DEADLINE_S, body_timeout_s=DEADLINE_S, max_connections=400)):
        yield served.port


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True once the server has closed `sock` (EOF or reset), within `within_s`."""
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_are_closed_while_a_normal_request_answers(port: int) -> None:
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/", content=b"abc", timeout=5)
        assert answer.status_code == 200 and answer.text == "3"
        assert all(_closed_by_server(s, within_s=DEADLINE_S + 4) for s in idle)
    finally:
        for s in idle:
            s.close()


def test_slow_drip_headers_are_cut_off(port: int) -> None:
    request = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 50 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started, sent = time.monotonic(), 0
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < len(request) or _closed_by_server(sock, within_s=2)
        assert time.monotonic() - started < DEADLINE_S + 4


def test_slow_drip_body_is_cut_off(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
        sent = 0
        try:
            for _ in range(100):
                sock.sendall(b"x")
                sent += 1
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 100 or _closed_by_server(sock, within_s=2)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))
            + b"\r\n",
            431,
        ),
    ],
)
def test_oversized_request_heads_get_a_status_not_a_hang(port: int, request_bytes: bytes, status: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request_bytes)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:100]


def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    for port in (s.port for s in _serve(Limits(header_timeout_s=30, body_timeout_s=30, max_connections=5))):
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        try:
            time.sleep(0.2)  # the server has accepted the five
            with socket.create_connection(("127.0.0.1", port)) as extra:
                assert _closed_by_server(extra, within_s=3)
            assert not _closed_by_server(held[0], within_s=0.5)  # those within the limit stay open
        finally:
            for s in held:
                s.close()


def test_https(certificates: Path) -> None:
    pem = str(certificates / "server.pem")
    for port in (s.port for s in _serve(Limits(), Tls(cert_file=pem, key_file=pem))):
        trusted = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
        answer = httpx.post(f"https://127.0.0.1:{port}/", content=b"abcd", verify=trusted, timeout=5)
        assert answer.status_code == 200 and answer.text == "4"
        with pytest.raises(httpx.ConnectError):  # the same port does not speak cleartext HTTP
            httpx.post(f"https://127.0.0.1:{port}/", content=b"x", timeout=5)  # (and an unknown CA is refused)


def test_mutual_tls_requires_a_client_certificate(certificates: Path) -> None:
    pem, ca = str(certificates / "server.pem"), str(certificates / "ca.pem")
    for port in (s.port for s in _serve(Limits(), Tls(cert_file=pem, key_file=pem, client_ca_file=ca))):
        anonymous = ssl.create_default_context(cafile=ca)
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.post(f"https://127.0.0.1:{port}/", content=b"x", verify=anonymous, timeout=5)
        identified = ssl.create_default_context(cafile=ca)
        identified.load_cert_chain(str(certificates / "client.pem"))
        answer = httpx.post(f"https://127.0.0.1:{port}/", content=b"xy", verify=identified, timeout=5)
        assert answer.status_code == 200 and answer.text == "2"


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and its Content-Length body) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the connection instead of answering (after {data[:100]!r})"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def test_stopping_lets_an_idle_keep_alive_connection_bring_one_last_request() -> None:
    """A rolling update stops the old replica: a client about to reuse its idle connection must not see a reset."""
    request = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc"
    for served in _serve(Limits()):
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            sock.sendall(request)
            first = _read_response(sock)
            assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
            stop = served.stopping()
            time.sleep(0.3)  # the server is stopping, and this connection is idle
            sock.sendall(request)
            last = _read_response(sock)
            assert last.startswith(b"HTTP/1.1 200") and b"connection: close" in last.lower(), last
            assert _closed_by_server(sock, within_s=3)
        stop.result(10)
