"""`modelfleet deploy` and `status` against a running Ray head: the one `modelfleet run` started for this session."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import ROOT, Fleet, check_docs_page, delete_app
from tests.helpers import run_cli as _cli

EXTRA = "extra"  # an app deployed next to the fleet, on its own route prefix
ECHO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


def _write_extra(tmp: Path, model_changes: dict | None = None) -> Path:
    spec = yaml.safe_load((ROOT / "examples/echo/app.yaml").read_text())
    spec.update(name=EXTRA, route_prefix=f"/{EXTRA}", ingress={"num_cpus": 0.05})  # the fleet leaves little CPU
    spec["models"][0]["resources"] = {"num_cpus": 0.05}
    spec["models"][0].update(model_changes or {})
    path = tmp / f"{EXTRA}-{len(list(tmp.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def extra_app(fleet: Fleet, ray_address: str, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("deploy")
    result = _cli("deploy", str(_write_extra(tmp)), "--address", ray_address, "--timeout-s", "180")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"deployed '{EXTRA}'" in result.stdout
    yield tmp
    delete_app(ray_address, EXTRA)


def test_deployed_app_answers_next_to_the_fleet(fleet: Fleet, extra_app: Path) -> None:
    response = httpx.post(f"{fleet.proxy_url}/{EXTRA}/v2/models/echo/infer", json=ECHO, timeout=30)
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [1.0, 2.0]


@pytest.mark.parametrize("page", ["docs", "redoc"])
def test_docs_under_a_route_prefix_load_from_it(fleet: Fleet, extra_app: Path, page: str) -> None:
    """Through Ray's proxy, under the app's route prefix: the pages' assets carry the prefix too."""
    with httpx.Client(base_url=fleet.proxy_url, timeout=30) as client:
        check_docs_page(client, f"/{EXTRA}/{page}")


def test_status_lists_apps_deployments_and_replicas(ray_address: str, extra_app: Path) -> None:
    result = _cli("status", "--address", ray_address, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {(r["app"], r["deployment"]): r for r in json.loads(result.stdout)}
    assert rows[(EXTRA, "echo")]["status"] == "HEALTHY" and rows[(EXTRA, "echo")]["replicas"] == {"RUNNING": 1}
    assert rows[("fleet", "digits")]["app_status"] == "RUNNING"
    table = _cli("status", "--address", ray_address)
    assert table.returncode == 0 and "digits" in table.stdout and EXTRA in table.stdout


def test_a_failed_update_leaves_the_previous_version_serving(fleet: Fleet, ray_address: str, extra_app: Path) -> None:
    broken = extra_app / "not-a-model.pt"
    broken.write_bytes(b"these bytes are not a TorchScript archive")
    pinned = {"uri": str(broken), "sha256": hashlib.sha256(broken.read_bytes()).hexdigest()}  # TorchScript is code
    spec = _write_extra(extra_app, {"format": "torchscript", "module": None, "artifact": pinned})
    result = _cli("deploy", str(spec), "--address", ray_address, "--timeout-s", "180")
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert (
        "not a TorchScript archive" in result.stderr and "failed its preflight, so it was not deployed" in result.stderr
    )
    still = httpx.post(f"{fleet.proxy_url}/{EXTRA}/v2/models/echo/infer", json=ECHO, timeout=30)
    assert still.status_code == 200 and still.json()["outputs"][0]["data"] == [1.0, 2.0]


def test_unreachable_cluster_is_a_clear_failure() -> None:
    from tests.helpers import free_port

    result = _cli("status", "--address", f"127.0.0.1:{free_port()}", timeout=120)
    assert result.returncode == 1 and "cannot connect to Ray" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_update_that_cannot_start_is_rolled_back(fleet: Fleet, ray_address: str, extra_app: Path) -> None:
    """It passes preflight (it loads fine) but can never be scheduled: deploy puts the old version back."""
    spec = _write_extra(extra_app, {"resources": {"num_cpus": 64}})
    result = _cli("deploy", str(spec), "--address", ray_address, "--timeout", "4s")
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert (
        "not running after 4s" in result.stderr
        and "rolled back to the previous version, which is serving" in result.stderr
    )
    after = httpx.post(f"{fleet.proxy_url}/{EXTRA}/v2/models/echo/infer", json=ECHO, timeout=30)
    assert after.status_code == 200 and after.json()["outputs"][0]["data"] == [1.0, 2.0]
    rows = {
        (r["app"], r["deployment"]): r for r in json.loads(_cli("status", "--address", ray_address, "--json").stdout)
    }
    assert rows[(EXTRA, "echo")]["status"] == "HEALTHY"
