"""Shared fixtures: one real `modelfleet run` (one Ray) per test session.

The server under test is the real command line, started as a user would
start it, serving the example fleet plus two test-only models: `types` (a
builtin echo over every datatype) and `faulty` (a real TorchScript model that
raises on negative input, to prove a model error is a 500 and not an outage).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FLEET_SPEC = ROOT / "examples" / "fleet.yaml"
MAX_BODY_MB = 1.0
REQUEST_TIMEOUT_S = 5.0
HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 5.0
# The fleet runs with API keys on, as production would: tests call it with the admin key.
ADMIN_KEY = "mf_test_admin_key_0123456789_abcdefghijklmnop"
DIGITS_KEY = "mf_test_digits_only_key_9876543210_qrstuvwxyz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_faulty_model(path: Path) -> None:
    import torch

    class Faulty(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x < 0).any()):
                raise RuntimeError("faulty model: negative input")
            return x * 2

    torch.jit.save(torch.jit.script(Faulty()), str(path))


_TYPES = ["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES"]


def _test_fleet(tmp: Path) -> Path:
    """The example fleet with absolute artifact paths, plus the test-only models."""
    spec = yaml.safe_load(FLEET_SPEC.read_text())
    for model in spec["models"]:
        if "artifact" in model and "://" not in model["artifact"]["uri"]:
            uri = model["artifact"]["uri"]
            model["artifact"]["uri"] = str((FLEET_SPEC.parent / uri).resolve()) + ("/" if uri.endswith("/") else "")
    import hashlib

    _write_faulty_model(tmp / "faulty.pt")
    faulty_sha256 = hashlib.sha256((tmp / "faulty.pt").read_bytes()).hexdigest()  # TorchScript is code: pinned
    from safetensors.torch import save_file

    save_file({}, str(tmp / "slow.safetensors"))  # SlowNet has no weights
    tiny = {"num_cpus": 0.1}
    spec["models"] += [
        {
            "name": "types",
            "format": "builtin",
            "module": "echo",
            "inputs": [{"name": f"in_{t.lower()}", "datatype": t, "shape": [-1, -1]} for t in _TYPES],
            "outputs": [{"name": f"out_{t.lower()}", "datatype": t, "shape": [-1, -1]} for t in _TYPES],
            "resources": tiny,
            "embedded": True,  # answered inside the ingress: every datatype through the in-process path too
        },
        {
            "name": "faulty",
            "format": "torchscript",
            "artifact": {"uri": str(tmp / "faulty.pt"), "sha256": faulty_sha256},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
            "resources": {**tiny, "num_gpus": 1},  # no GPU here: must run on CPU, with a warning
        },
        {
            "name": "slow",
            "format": "safetensors",
            "module": "tests.fixtures.tiny:SlowNet",
            "artifact": {"uri": str(tmp / "slow.safetensors")},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
            "resources": {**tiny, "pool": "cpu"},  # the deploy only succeeds if the pool resource exists
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
        },
    ]
    spec["models"].append({  # two replicas of a deployed echo, for the replica-kill test (test_faults.py)
        "name": "sturdy", "format": "builtin", "module": "echo",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
        "resources": {"num_cpus": 0.05}, "autoscaling": {"min_replicas": 2, "max_replicas": 2},
    })
    spec["ingress"] = {
        **spec.get("ingress", {}), "max_body_mb": MAX_BODY_MB, "request_timeout_s": REQUEST_TIMEOUT_S,
        # Short deadlines, so the fuzzers' truncated requests are cut off quickly.
        "header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S,
    }
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass
class Fleet:
    url: str
    spec_path: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def proxy_url(self) -> str:
        """Ray Serve's proxy on the run's Ray, where apps deployed onto it answer (`run` prints `proxy: URL`)."""
        match = re.search(r"^proxy: (\S+)", self.log(), flags=re.M)
        assert match, "modelfleet run prints its proxy URL"
        return match.group(1)

    def client(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)


def wait_until(ready, timeout_s: float, what: str, process: subprocess.Popen | None, log: Path) -> None:
    """Poll `ready()` (HTTP errors count as not yet) until true; fail with the log's tail if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: process exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{what}: not ready after {timeout_s}s:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    tmp = tmp_path_factory.mktemp("fleet")
    spec_path = _test_fleet(tmp)
    port = free_port()
    log_path = tmp / "modelfleet-run.log"
    env = {
        **os.environ,
        "MODELFLEET_CACHE_DIR": str(tmp / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MODELFLEET_API_KEYS": f"{ADMIN_KEY}=admin;{DIGITS_KEY}=invoke:digits",
        "PYTHONPATH": str(ROOT),  # replicas import tests.fixtures
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelfleet", "run", str(spec_path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True,
        )
    fleet = Fleet(f"http://127.0.0.1:{port}", spec_path, log_path, process)
    try:
        wait_until(
            # Ready, and done printing (the ingress can answer before `run` prints its last line).
            lambda: httpx.get(f"{fleet.url}/v2/health/ready", timeout=5).status_code == 200 and "\nproxy: " in fleet.log(),
            300, "modelfleet run", process, log_path,
        )
        yield fleet
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    # Ctrl-C must stop Serve and Ray cleanly: a failure here errors the session.
    assert process.returncode == 0, f"modelfleet run exited {process.returncode} on Ctrl-C:\n{fleet.log()[-4000:]}"
    assert "stopped." in fleet.log()


@pytest.fixture()
def client(fleet: Fleet):
    with fleet.client() as c:
        yield c


def run_cli(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m modelfleet ARGS` as a user runs it; keyless (apps it deploys serve on loopback)."""
    env = env or {k: v for k, v in os.environ.items() if k != "MODELFLEET_API_KEYS"}
    return subprocess.run([sys.executable, "-m", "modelfleet", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def ray_driver(address: str, code: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python connected to the Ray cluster at `address` (as `ray`, with `serve` imported)."""
    prelude = (
        "import os, sys; os.environ.setdefault('RAY_AUTH_MODE', 'token'); "
        # Loopback clusters run in Ray's single-machine mode; their drivers must too.
        "sys.argv[1].startswith('127.0.0.1:') and os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0'); "
        "import ray; from ray import serve; "
        "ray.init(address=sys.argv[1], logging_level='ERROR')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", prelude + code, address, *args], capture_output=True, text=True, env=env, timeout=timeout)


_DEPLOY_LISTENING = (
    "from serve_apps.runner import RayTarget; from serve_apps.spec import load_app_spec\n"
    "RayTarget(gpus_known=False).deploy(load_app_spec(sys.argv[2]), listen=('127.0.0.1', int(sys.argv[3])), timeout_s=180)"
)


def deploy_listening(address: str, spec_path: Path, port: int) -> None:
    """Deploy an app onto the Ray at `address` with its ingress replicas listening on 127.0.0.1:`port`, as `run` does."""
    done = ray_driver(address, _DEPLOY_LISTENING, str(spec_path), str(port))
    assert done.returncode == 0, done.stderr[-3000:]


def delete_app(address: str, app_name: str) -> None:
    ray_driver(address, "serve.delete(sys.argv[2])", app_name, timeout=120)


@pytest.fixture(scope="session")
def ray_address(fleet: Fleet) -> str:
    """The Ray head `modelfleet run` started for this session (it prints `ray: ADDRESS`)."""
    match = re.search(r"^ray: (\S+)", fleet.log(), flags=re.M)
    assert match, "modelfleet run prints its Ray address"
    return match.group(1)


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
        (ip, name) for ip, name in listening_addresses(session_leader)
        if ip not in ("127.0.0.1", "::1") and not (ip == "::" and name.startswith("ray::ServeRepl"))
    }


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium, driven by Playwright, for the HTML reports."""
    from tests.fixtures.browser import BROWSER_ARGS, CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (`make test` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made on the fly (trustme), a server certificate for 127.0.0.1/localhost and a client one: PEM files."""
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    ca.issue_cert("client@example.org").private_key_and_cert_chain_pem.write_to_path(str(folder / "client.pem"))
    return folder
