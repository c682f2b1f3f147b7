"""Real storage servers on free loopback ports, one per session, for the conformance suite.

S3: moto_server. GCS: gcp-storage-emulator. Azure: Azurite (npm, under
.tools/). HTTP: a stdlib threaded server with routes that misbehave on
purpose (cut short, grow, redirect; see `_Handler`). Each is reached
through its SDK's standard setting only (AWS_ENDPOINT_URL,
STORAGE_EMULATOR_HOST, AZURE_STORAGE_CONNECTION_STRING), exactly as
production would.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.helpers import ROOT, free_port

BIN = Path(sys.executable).parent  # the venv running the tests has the emulators
AZURITE = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _require(path: Path, what: str) -> str:
    if path.exists():
        return str(path)
    message = f"{what} not found at {path}; run `make setup`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _wait_http(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


@functools.cache
def _stop_later() -> list[subprocess.Popen]:
    return []


def _start(args: list[str], url: str, tmp: Path) -> subprocess.Popen:
    log = (tmp / f"{Path(args[0]).name}.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    _stop_later().append(process)
    _wait_http(url, process)
    return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def s3_environment(endpoint: str) -> dict[str, str]:
    """What points boto3 (and the S3 provider) at the moto_server at `endpoint`, with the credentials it takes."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start(
        [_require(BIN / "moto_server", "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        url,
        tmp_path_factory.mktemp("s3"),
    )
    yield url
    _stop(process)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = _require(BIN / "gcp-storage-emulator", "gcp-storage-emulator")
    process = _start(
        [exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
        url,
        tmp_path_factory.mktemp("gcs"),
    )
    yield url
    _stop(process)


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    tmp = tmp_path_factory.mktemp("azurite")
    exe = _require(AZURITE, "Azurite (npm)")
    args = [
        exe,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(tmp),
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
    ]
    process = _start(args, f"http://127.0.0.1:{port}/devstoreaccount1", tmp)
    yield (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
    _stop(process)


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder, plus routes that misbehave on purpose.

    /truncated/<file>    announces the full length and sends half
    /grows/<file>        HEAD announces half the length, GET sends it all (the object "grew")
    /unsized/<file>      sends the file with no Content-Length (ends when the connection closes)
    /redirect?to=<url>   302 to <url>; /loop 302s to itself forever
    """

    def log_message(self, *args) -> None:
        pass

    def _redirect(self) -> bool:
        parts = urlsplit(self.path)
        if parts.path not in ("/redirect", "/loop"):
            return False
        self.server.redirects += 1
        target = parse_qs(parts.query)["to"][0] if parts.path == "/redirect" else "/loop"
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self.server.gets += 1
        if self._redirect():
            return
        if self.path.startswith(("/grows/", "/unsized/")):
            data = (Path(self.directory) / self.path.split("/", 2)[2]).read_bytes()
            self.send_response(200)
            if self.path.startswith("/grows/"):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
            return
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if self._redirect():
            return
        if self.path.startswith(("/grows/", "/unsized/")):
            size = (Path(self.directory) / self.path.split("/", 2)[2]).stat().st_size
            self.send_response(200)
            if self.path.startswith("/grows/"):
                self.send_header("Content-Length", str(size // 2))
            self.end_headers()
            return
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        super().do_HEAD()


@contextlib.contextmanager
def _serve(root: Path) -> Iterator[tuple[str, Path, ThreadingHTTPServer]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.gets = server.redirects = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory) -> Iterator[tuple[str, Path, ThreadingHTTPServer]]:
    with _serve(tmp_path_factory.mktemp("www")) as served:
        yield served


@pytest.fixture(scope="session")
def other_http_server(http_server) -> Iterator[tuple[str, Path, ThreadingHTTPServer]]:
    """The same folder on another loopback port: a different origin that would serve the same bytes."""
    with _serve(http_server[1]) as served:
        yield served


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cache_files(cache: Path) -> list[Path]:
    """Every file in the cache except lock files (which may stay, empty, by design)."""
    if not cache.exists():
        return []
    return [p for p in cache.rglob("*") if p.is_file() and p.parent.name != "locks"]
