"""`build` output through Ray's own `serve deploy`, and `modelfleet deploy`, on a head started by `ray start --head`.

A second, small Ray cluster just for this module (the session's fleet runs on
the head that `modelfleet run` started): started with `--block` in its own
process group, and stopped by signalling that group only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from groundwork.processes import stop_process_tree
from groundwork.ray_env import LOOPBACK_ONLY_ENV, WHOLE_CLUSTER_STOPS_AT_ONCE
from tests.helpers import ROOT, free_port, run_cli, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]  # a Ray head of its own: `make test-fast` leaves it out
PIXELS = [0.0] * 64


@dataclass
class Head:
    address: str  # GCS host:port, for `modelfleet deploy --address`
    dashboard: str  # http://host:port, for `serve deploy --address`
    serve_url: str
    log: Path
    process: subprocess.Popen


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Head:
    tmp = tmp_path_factory.mktemp("head")
    gcs, dashboard, serve_port, metrics = free_port(), free_port(), free_port(), free_port()
    log = tmp / "ray-start.log"
    ray = Path(sys.executable).parent / "ray"
    # Loopback only, as every local Ray of ours.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        **LOOPBACK_ONLY_ENV,
        **WHOLE_CLUSTER_STOPS_AT_ONCE,  # this head is the whole cluster
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(ray),
                "start",
                "--head",
                "--block",
                f"--port={gcs}",
                "--node-ip-address=127.0.0.1",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                # Ray would pick this one itself, from the ports free when it starts: once it picked the Serve port
                # reserved above (free until Serve binds it), and Serve's proxy could not start.
                f"--metrics-export-port={metrics}",
                "--num-cpus=1",
                "--disable-usage-stats",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )
    head = Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{serve_port}", log, process)
    try:
        # 401 counts as up: Ray 2.60 heads require their auth token (our CLIs and `serve` send it).
        up = lambda: httpx.get(f"{head.dashboard}/api/version", timeout=5).status_code in (200, 401)  # noqa: E731
        wait_until(up, 120, "ray start --head", process, log)
        yield head
    finally:
        # `ray start --block` drains on SIGTERM, then stops the processes it started; stragglers of its session go too.
        stop_process_tree(process, signal.SIGTERM, grace_s=120)


def _small_digits(tmp: Path, **changes) -> Path:
    spec = yaml.safe_load((ROOT / "examples/digits/app.yaml").read_text())
    spec["models"][0]["artifact"]["uri"] = str(ROOT / "examples/digits" / spec["models"][0]["artifact"]["uri"])
    spec["models"][0]["resources"] = {"num_cpus": 0.2}
    spec["ingress"] = {"num_cpus": 0.1}
    spec.update(changes)
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_build_output_runs_under_serve_deploy(head: Head, tmp_path: Path) -> None:
    from examples.digits.train import ensure_trained

    ensure_trained()
    port = head.serve_url.rsplit(":", 1)[1]
    config = tmp_path / "serve_config.yaml"
    built = run_cli("build", str(_small_digits(tmp_path)), "-o", str(config), "--host", "127.0.0.1", "--port", port)
    assert built.returncode == 0, built.stderr
    serve = Path(sys.executable).parent / "serve"
    deployed = subprocess.run(
        [str(serve), "deploy", str(config), "--address", head.dashboard],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    ready = lambda: httpx.get(f"{head.serve_url}/v2/health/ready", timeout=5).status_code == 200  # noqa: E731
    wait_until(ready, 240, "digits under serve deploy", head.process, head.log)
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": PIXELS}]}
    response = httpx.post(f"{head.serve_url}/v2/models/digits/infer", json=body, timeout=30)
    assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [1, 10]


def test_modelfleet_deploy_and_status_on_the_same_head(head: Head, tmp_path: Path) -> None:
    spec = _small_digits(tmp_path, name="second", route_prefix="/second")
    result = run_cli("deploy", str(spec), "--address", head.address, "--timeout-s", "240", timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": PIXELS}]}
    response = httpx.post(f"{head.serve_url}/second/v2/models/digits/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    status = run_cli("status", "--address", head.address, "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    apps = {row["app"] for row in json.loads(status.stdout)}
    assert {"second"} <= apps, apps
