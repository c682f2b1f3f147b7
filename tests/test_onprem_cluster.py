"""A real multi-node Ray on the on-prem test bed, driven from this machine as an operator drives real machines.

`cluster up` launches the head and the workers over SSH with Ray's launcher (`ray up`), from
examples/clusters/onprem-testbed.yaml moved to the tests' own subnet. `deploy` from the root namespace (not a
node of the cluster) runs on the head, and sends the app's code and artifacts to every host: each host has a
home of its own, so nothing reaches a host unless it is sent. fraud's GPU scorer lands on the gpu-pool host,
the rest on the cpu hosts, and fraud answers at `serve_url`. `cluster down` stops Ray on every host.

Runs in `make test-cluster` (`.ci/run` runs it after `make test`): a Ray per host is too much to share two
cores with the session's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cluster import testbed
from serve_apps.samples import sample_v2
from serve_apps.spec import load_app_spec
from tests.helpers import ROOT, run_cli

pytestmark = [
    pytest.mark.onprem,
    pytest.mark.skipif(os.geteuid() != 0, reason="the test bed needs root (namespaces, bridges, mounts)"),
    pytest.mark.skipif(
        not testbed.SSHD.exists(), reason="Debian's openssh-server is not installed (`make test` installs it)"
    ),
]

SUBNET = 233  # apart from the default bed's (213) and test_testbed's
KEY = "mf_onprem_test_key_0123456789_abcdefghijklmnop"
FRAUD = ROOT / "examples" / "fraud" / "app.yaml"


def _address(i: int) -> str:
    return f"10.{SUBNET}.0.{10 + i}"


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onprem") / "bed"
    made = testbed.up(hosts=3, folder=folder, subnet=SUBNET)
    try:
        yield made
    finally:
        assert testbed.down(folder) == []


@pytest.fixture(scope="module")
def cluster(bed, tmp_path_factory):
    """The example cluster on the bed: launched by `cluster up`, stopped by `cluster down` (checked on every host)."""
    tmp = tmp_path_factory.mktemp("operator")
    spec = yaml.safe_load((ROOT / "examples/clusters/onprem-testbed.yaml").read_text())
    spec["name"] = "mf-test-onprem"
    spec["head"]["host"] = _address(0)
    for i, pool in enumerate(spec["pools"], start=1):
        pool["hosts"] = [_address(i)]
    spec["ssh"]["private_key"] = bed.key
    spec["network"]["allowed_source_ranges"] = [f"10.{SUBNET}.0.0/24"]
    path = tmp / "onprem.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {
        **{k: v for k, v in os.environ.items() if k != "MODELFLEET_API_KEYS"},
        "MODELFLEET_HOME": str(tmp / "home"),
        "HOME": str(tmp / "operator-home"),  # the operator's own: its Ray token, made by `cluster up`
    }
    started = time.monotonic()
    result = run_cli("cluster", "up", str(path), "--json", env=env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    up_s = time.monotonic() - started
    state = json.loads(result.stdout)
    print(f"\ncluster up on the test bed (head and 2 workers over SSH): {up_s:.0f} s")
    try:
        yield path, env, state
    finally:
        down = run_cli("cluster", "down", str(path), env=env, timeout=600)
        assert down.returncode == 0, down.stdout + down.stderr
        for host in bed.hosts:  # the host's own process table: what runs there, by name
            names = bed.ssh(host, "ps -eo comm=").stdout.split()
            left = [n for n in names if n.startswith(("raylet", "gcs_server", "ray::", "dashboard"))]
            assert left == [], f"{host.name}: Ray processes outlived `cluster down`: {left}"


def _json(result: subprocess.CompletedProcess) -> dict | list:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_cluster_up_launches_every_host_and_status_names_them_by_pool(cluster) -> None:
    path, env, state = cluster
    assert state["address"] == f"{_address(0)}:6379" and state["head"] == _address(0)
    report = _json(run_cli("cluster", "status", str(path), "--json", env=env, timeout=300))
    assert report["address"] == state["address"] and report["serve_url"] == f"http://{_address(0)}:8000"
    assert report["pools"]["cpu"]["hosts"] == [_address(1)] and report["pools"]["cpu"]["gpus"] == 0
    assert report["pools"]["gpu"]["hosts"] == [_address(2)] and report["pools"]["gpu"]["gpus"] == 1


def test_fraud_deployed_from_here_runs_across_the_hosts_and_answers_at_serve_url(cluster, tmp_path: Path) -> None:
    path, env, state = cluster
    env = {**env, "MODELFLEET_API_KEYS": f"{KEY}=invoke:*"}
    started = time.monotonic()
    deploy = run_cli(
        "deploy",
        str(FRAUD),
        "--address",
        state["address"],
        "--host",
        "0.0.0.0",
        "--timeout",
        "8m",
        env=env,
        timeout=900,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert f"deployed 'fraud' to {state['address']}" in deploy.stdout

    body = sample_v2(load_app_spec(FRAUD).model("fraud"))
    url = f"{state['serve_url']}/v2/models/fraud/infer"
    with httpx.Client(timeout=60) as client:
        assert client.post(url, json=body).status_code == 401  # exposed beyond the head: keys required
        answer = client.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"})
    first_answer_s = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert 0 <= outputs["fraud_probability"]["data"][0] <= 1
    print(f"\ndeploy of fraud from the root namespace to its first answer at serve_url: {first_answer_s:.0f} s")

    rows = _json(run_cli("status", "--address", state["address"], "--json", env=env, timeout=300))
    nodes = {r["deployment"]: r["nodes"] for r in rows if r["app"] == "fraud"}
    assert nodes["scorer_mlp"] == {_address(2): 1}, nodes  # pool gpu, and the one host with a GPU
    for deployment in ("ingress", "featurizer", "scorer_lr", "ensemble"):
        assert _address(0) not in nodes[deployment], nodes  # the head runs no replicas (num-cpus 0)
        assert sum(nodes[deployment].values()) >= 1, nodes
