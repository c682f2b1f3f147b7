"""What tests share besides fixtures: the paths and keys of the test fleet, the CLI and Ray as a user runs them,
waiting, and what a session's processes listen on. (Fixtures live in conftest.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from groundwork.processes import free_port

__all__ = [
    "ADMIN_KEY",
    "BODY_TIMEOUT_S",
    "DIGITS_KEY",
    "FLEET_SPEC",
    "HEADER_TIMEOUT_S",
    "MAX_BODY_MB",
    "REQUEST_TIMEOUT_S",
    "ROOT",
    "TYPES_MODEL",
    "Fleet",
    "check_docs_page",
    "delete_app",
    "deletions_finished",
    "fleet_record",
    "deploy_listening",
    "free_port",
    "listening_addresses",
    "not_on_loopback",
    "ray_driver",
    "run_cli",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[1]
FLEET_SPEC = ROOT / "examples" / "fleet.yaml"
MAX_BODY_MB = 1.0
REQUEST_TIMEOUT_S = 5.0
HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 5.0
# The fleet runs with API keys on, as production would: tests call it with the admin key.
DATATYPES = ["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES"]
# `types`: a builtin echo over every datatype, in the test fleet (tests/conftest.py) and the decoder's unit tests.
TYPES_MODEL = {
    "name": "types",
    "format": "builtin",
    "module": "echo",
    "inputs": [{"name": f"in_{t.lower()}", "datatype": t, "shape": [-1, -1]} for t in DATATYPES],
    "outputs": [{"name": f"out_{t.lower()}", "datatype": t, "shape": [-1, -1]} for t in DATATYPES],
}
ADMIN_KEY = "mf_test_admin_key_0123456789_abcdefghijklmnop"
DIGITS_KEY = "mf_test_digits_only_key_9876543210_qrstuvwxyz"


@dataclass
class Fleet:
    url: str
    spec_path: Path
    log_path: Path
    process: subprocess.Popen
    ready_path: Path  # `run --ready-file`: {app, url, proxy_url, ray_address, pid} once serving

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> dict:
        return json.loads(self.ready_path.read_text())

    @property
    def proxy_url(self) -> str:
        """Ray Serve's proxy on the run's Ray, where apps deployed onto it answer."""
        return self.ready()["proxy_url"]

    def client(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)


def check_docs_page(client: httpx.Client, page: str) -> None:
    """`page` (a /docs or /redoc URL path) names no absolute URL, and every script, stylesheet and icon it loads,
    and the OpenAPI document, come from the same server under the same prefix: offline, the page still works."""
    html = client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html"), html.text
    assert re.findall(r"(?:https?:)?//[^\s\"'<>]+", html.text) == []  # no CDN, no font service, not even `//host`
    assets = re.findall(r"<script[^>]*\ssrc=\"([^\"]+)\"", html.text) + re.findall(
        r"<link[^>]*\shref=\"([^\"]+)\"", html.text
    )
    spec_urls = re.findall(r"""(?:url: |spec-url=)['"]([^'"]+)['"]""", html.text)
    prefix = page.rsplit("/", 1)[0]
    assert any(a.endswith(".js") for a in assets) and spec_urls == [f"{prefix}/openapi.json"], html.text
    for url in assets + spec_urls:
        assert url.startswith(f"{prefix}/"), url
        fetched = client.get(url)
        assert fetched.status_code == 200 and fetched.content, (url, fetched.status_code)


def run_async(coroutine):
    """`asyncio.run(coroutine)`, and its result, in a thread of its own: a session fixture (Playwright's sync API) may
    have left an event loop running in this one, and asyncio.run refuses to start inside it."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


async def eventually(condition, what: str) -> None:
    """In an asyncio test: yield to the code under test until `condition()` holds (bounded: a failure names `what`)."""
    import asyncio

    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


def wait_until(
    ready, timeout_s: float, what: str, process: subprocess.Popen | None, log: Path, every_s: float = 0.25
) -> None:
    """Poll `ready()` every `every_s` (HTTP errors count as not yet) until true; fail with the log's tail if `process`
    exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: process exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(every_s)
    pytest.fail(f"{what}: not ready after {timeout_s}s:\n{log.read_text(errors='replace')[-4000:]}")


def run_cli(
    *args: str, timeout: float = 240, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`python -m modelfleet ARGS` as a user runs it; keyless (apps it deploys serve on loopback).

    `cwd`: run from there instead of the checkout (which stays first on the import path)."""
    env = env or {k: v for k, v in os.environ.items() if k != "MODELFLEET_API_KEYS"}
    if cwd is not None:
        env = {**env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=timeout,
    )


def _driver(address: str, code: str, *args: str) -> dict:
    """How to start `code` in a fresh Python connected to the Ray cluster at `address` (as `ray`, with `serve`
    imported): `subprocess` arguments."""
    # serve_apps.connect, as the README tells users: it sets what Ray reads on import, then joins.
    prelude = "import sys; from serve_apps import connect; connect(sys.argv[1]); import ray; from ray import serve\n"
    command = [sys.executable, "-c", prelude + code, address, *args]
    return {"args": command, "env": {**os.environ, "PYTHONPATH": str(ROOT)}, "text": True}


def ray_driver(address: str, code: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python connected to the Ray cluster at `address` (as `ray`, with `serve` imported)."""
    return subprocess.run(**_driver(address, code, *args), capture_output=True, timeout=timeout)


_DEPLOY_LISTENING = (
    "from serve_apps.deploy import RayTarget; from serve_apps.spec import load_app_spec\n"
    "RayTarget(gpus_known=False).deploy(load_app_spec(sys.argv[2]), listen=('127.0.0.1', int(sys.argv[3])), "
    "timeout_s=180)"
)


def deploy_listening(address: str, spec_path: Path, port: int) -> None:
    """Deploy an app onto the Ray at `address` with its ingress replicas listening on 127.0.0.1:`port`, as `run`
    does."""
    done = ray_driver(address, _DEPLOY_LISTENING, str(spec_path), str(port))
    assert done.returncode == 0, done.stderr[-3000:]


_deletions: list[subprocess.Popen] = []


def delete_app(address: str, app_name: str, wait: bool = False) -> None:
    """Delete an app from the Ray at `address`; by default in the background (a driver's start and Serve's stop of
    the replicas take seconds the next test need not wait for), finished by `deletions_finished`."""
    driver = _driver(address, "serve.delete(sys.argv[2])", app_name)
    _deletions.append(subprocess.Popen(**driver, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    if wait:
        deletions_finished()


def deletions_finished(timeout_s: float = 120) -> None:
    """Wait for every app deletion `delete_app` started (before the Ray they delete from stops)."""
    while _deletions:
        deletion = _deletions.pop()
        _, stderr = deletion.communicate(timeout=timeout_s)
        assert deletion.returncode == 0, f"an app's deletion failed: {stderr[-3000:]}"


def listening_addresses(session_leader: int) -> set[tuple[str, str]]:
    """(IP, process name) for every TCP socket that processes of the session `session_leader` leads listen on."""
    import psutil

    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or conn.pid is None:
            continue
        try:
            if os.getsid(conn.pid) == session_leader:
                found.add((conn.laddr.ip.removeprefix("::ffff:"), psutil.Process(conn.pid).name()))
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def not_on_loopback(session_leader: int) -> set[tuple[str, str]]:
    """What listens beyond loopback, but for Serve's inter-replica gRPC server: Ray Serve 2.60 binds
    it to [::] unconditionally (replica.py, `add_port_to_grpc_server(server, "[::]:0")`); the
    cluster's token guards it. Everything else of a local Ray must be on 127.0.0.1."""
    return {
        (ip, name)
        for ip, name in listening_addresses(session_leader)
        if ip not in ("127.0.0.1", "::1") and not (ip == "::" and name.startswith("ray::ServeRepl"))
    }


def fleet_record(fleet: Fleet, home: Path) -> Path:
    """The fleet's record of its Ray, as `run` writes it, in a home of the test's own."""
    ready = fleet.ready()
    (home / "rays").mkdir(parents=True, exist_ok=True)
    record = home / "rays" / f"{fleet.process.pid}.json"
    import psutil

    command = psutil.Process(fleet.process.pid).cmdline()
    record.write_text(
        json.dumps(
            {
                "kind": "run",
                "name": ready["app"],
                "ray_address": ready["ray_address"],
                "url": ready["url"],
                "pid": fleet.process.pid,
                "command": command,
            }
        )
    )
    return record
