"""Faults under load, with nothing lost: replicas killed, versions rolled, a bad version refused.

The load is `modelfleet loadtest` against 127.0.0.1, bounded in time; what
counts is its own tally of failed requests. These are the short versions for
`make test`; `python -m bench.faults` runs the long ones (BENCHMARKS.md).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from loadtests.chaos import BackgroundLoad, ReplicaKiller, replica_pids
from loadtests.server_counts import SETTLE_S, scrape
from tests.helpers import ADMIN_KEY, ROOT, Fleet, delete_app, deploy_listening, free_port, run_cli, wait_until

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out

LOAD_S = 10
KILL_LOAD_S = 15  # Serve takes several seconds to replace a killed replica: room for two kills
ECHO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
ROLLING = "rolling"  # an app deployed next to the fleet, updated while under load
INGRESS_REPLICAS = 2  # rolling's ingress replicas share its port (SO_REUSEPORT), as under `modelfleet run`


def _retries(fleet: Fleet, model: str) -> float:
    with fleet.client() as client:
        text = client.get("/metrics").text
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(f'modelfleet_replica_retries_total{{app="fleet",model="{model}"}}')
    ]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_killed_replicas_lose_no_request(fleet: Fleet, tmp_path: Path) -> None:
    """`sturdy` has 2 replicas; one is SIGKILLed every 4 s (when both are up) while 4 users call it. Serve restarts
    them;
    a call whose replica died before answering is retried once on the other."""
    load = BackgroundLoad(f"{fleet.url}/v2/models/sturdy/infer", ECHO, tmp_path, KILL_LOAD_S, api_key=ADMIN_KEY)
    killer = ReplicaKiller("fleet", "sturdy", every_s=4, min_running=2, duration_s=KILL_LOAD_S - 2).start()
    try:
        summary = load.finish()
    finally:
        killer.stop()
    print(
        f"\nreplica kills: {killer.kills}; {summary['requests']} requests, {summary['failures']} failed, "
        f"{_retries(fleet, 'sturdy'):g} retried"
    )
    assert killer.kills, "no replica was killed: Serve never had both replicas up"
    assert summary["requests"] > 100 and summary["failures"] == 0, summary


def _rolling_spec(tmp: Path, version: str, model: dict | None = None) -> Path:
    spec = yaml.safe_load((ROOT / "examples/echo/app.yaml").read_text())
    spec.update(name=ROLLING, route_prefix=f"/{ROLLING}", ingress={"num_cpus": 0.05, "num_replicas": INGRESS_REPLICAS})
    spec["models"][0].update(
        version=version,
        resources={"num_cpus": 0.05},
        autoscaling={"min_replicas": 1, "max_replicas": 1},
        **(model or {}),
    )
    path = tmp / f"{ROLLING}-{version}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@dataclass
class Rolling:
    folder: Path
    port: int
    url: str  # the app's own port: its ingress replicas listen there, as under `modelfleet run`


@pytest.fixture(scope="module")
def rolling_app(fleet: Fleet, ray_address: str, tmp_path_factory) -> Rolling:
    """Version 1, listening on a port of its own; `modelfleet deploy` updates keep listening there."""
    tmp, port = tmp_path_factory.mktemp("rolling"), free_port()
    deploy_listening(ray_address, _rolling_spec(tmp, "1"), port)
    yield Rolling(tmp, port, f"http://127.0.0.1:{port}/{ROLLING}/v2/models/echo/infer")
    delete_app(ray_address, ROLLING)


def _server_count(rolling: Rolling) -> float:
    """The echo's requests as the rolling app counts them (its monitor sums every ingress replica, live or gone)."""
    counts = scrape(f"http://127.0.0.1:{rolling.port}/{ROLLING}/metrics", {}, settle_s=SETTLE_S)
    assert counts is not None, "the rolling app's /metrics had no modelfleet series"
    return counts.requests.get("echo", 0.0)


def _served_version(rolling: Rolling) -> str:
    response = httpx.post(rolling.url, json=ECHO, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def test_killed_ingress_replicas_refuse_no_connection(rolling_app: Rolling) -> None:
    """One of the two ingress replicas listening on the app's port is SIGKILLed every 4 s (when both listen).

    New connections go to the survivor (the kernel only balances SO_REUSEPORT
    among live listeners), so none is refused; a request in flight on the
    killed replica's connection sees it closed: at most one per user per kill.
    """
    users = 4
    load = BackgroundLoad(rolling_app.url, ECHO, rolling_app.folder / "ingress-kills", LOAD_S, users=users)
    killer = ReplicaKiller(
        ROLLING,
        "ingress",
        every_s=4,
        min_running=INGRESS_REPLICAS,
        duration_s=LOAD_S - 2,
        listening_on=rolling_app.port,
    ).start()
    try:
        summary = load.finish()
    finally:
        killer.stop()
    print(
        f"\ningress kills: {killer.kills}; {summary['requests']} requests, {summary['failures']} failed: "
        f"{summary['errors']}"
    )
    assert killer.kills, "no ingress replica was killed: Serve never had both listening"
    assert summary["requests"] > 100 and summary["failures"] <= users * len(killer.kills), summary
    assert not [e for e in summary["errors"] if "refused" in e.lower()], summary["errors"]
    wait_until(
        lambda: len(replica_pids(ROLLING, "ingress", rolling_app.port)) == INGRESS_REPLICAS,
        60,
        "Serve to replace the killed ingress replicas",
        None,
        load.log,
    )
    _served_version(rolling_app)


def test_rolling_updates_under_load_lose_no_request(ray_address: str, rolling_app: Rolling) -> None:
    """Through the app's own port: before new ingress replicas started ahead of old ones (max_surge_percent)
    and idle connections were drained, each update refused connections for seconds."""
    updates = 1  # a deploy takes 15-30 s here (bench.faults runs 20); the load runs until 2 s after the last
    counted_before = _server_count(rolling_app)
    load = BackgroundLoad(rolling_app.url, ECHO, rolling_app.folder / "load", 120)
    started = time.monotonic()
    time.sleep(2)  # the load is on before the first update
    for n in range(2, 2 + updates):
        result = run_cli(
            "deploy", str(_rolling_spec(rolling_app.folder, str(n))), "--address", ray_address, "--timeout-s", "180"
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert _served_version(rolling_app) == str(n)
    updated_s = time.monotonic() - started
    time.sleep(1)  # and the new version under load for a moment
    summary = load.stop()
    print(
        f"\n{updates} rolling updates in {updated_s:.0f} s: {summary['requests']} requests, {summary['failures']} "
        "failed"
    )
    assert summary["interrupted_at_s"] is not None, "the load ended before the updates did: raise its seconds"
    assert summary["requests"] > 100 and summary["failures"] == 0, summary
    # Every ingress replica was replaced, and the app's count went on: nothing counted twice, nothing lost (but the
    # requests in flight when the load stopped, which the server answered and the generator did not count).
    counted = _server_count(rolling_app) - counted_before - updates  # less _served_version's own requests
    assert abs(counted - summary["requests"]) <= 0.01 * summary["requests"] + load.users, (counted, summary)


def test_a_version_that_crashes_on_its_first_request_is_refused_under_load(
    ray_address: str, rolling_app: Rolling
) -> None:
    before = _served_version(rolling_app)
    load = BackgroundLoad(rolling_app.url, ECHO, rolling_app.folder / "crash-load", LOAD_S)
    crashing = {"format": "python", "module": "tests.fixtures.tiny:CrashOnRequest"}
    result = run_cli(
        "deploy",
        str(_rolling_spec(rolling_app.folder, "crashes", crashing)),
        "--address",
        ray_address,
        "--timeout-s",
        "180",
    )
    summary = load.finish()
    assert result.returncode == 1 and "crashes on its first request" in result.stderr, result.stderr[-3000:]
    assert "not deployed" in result.stderr
    assert _served_version(rolling_app) == before
    assert summary["requests"] > 100 and summary["failures"] == 0, summary


class _DyingStorage(ThreadingHTTPServer):
    """An artifact server that promises 1 MiB and drops the connection after 64 KiB, every time: an outage
    mid-download."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(1024 * 1024))
                self.send_header("ETag", '"v1"')
                self.end_headers()

            def do_GET(self) -> None:
                self.do_HEAD()
                self.wfile.write(b"\0" * 64 * 1024)
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_a_storage_outage_mid_deploy_leaves_the_running_version_and_a_clean_cache(
    fleet: Fleet, ray_address: str, rolling_app: Rolling
) -> None:
    before = _served_version(rolling_app)
    storage = _DyingStorage()
    try:
        uri = f"http://127.0.0.1:{storage.server_address[1]}/models/echo/9/blob.bin"
        model = {"format": "python", "module": "tests.fixtures.tiny:EchoWithArtifact", "artifact": {"uri": uri}}
        result = run_cli(
            "deploy", str(_rolling_spec(rolling_app.folder, "9", model)), "--address", ray_address, "--timeout-s", "180"
        )
    finally:
        storage.shutdown()
        storage.server_close()
    assert result.returncode == 1 and "not deployed" in result.stderr, result.stderr[-3000:]
    assert "ended after 65536 of 1048576 bytes" in result.stderr or "interrupted" in result.stderr, result.stderr[
        -3000:
    ]
    assert _served_version(rolling_app) == before
    cache = fleet.spec_path.parent / "cache"  # the fleet's MODELFLEET_CACHE_DIR, shared by its Ray workers
    assert not [p for p in (cache / "tmp").iterdir()], "a partial download was left in the cache"
    assert not [p for p in cache.rglob("blob.bin")], "a partial download became a cache entry"
