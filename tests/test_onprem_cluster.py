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
from cluster.runtime import this_machine
from serve_apps.samples import sample_v2
from serve_apps.spec import load_app_spec
from tests.helpers import ROOT, run_cli

pytestmark = [
    pytest.mark.onprem,
    pytest.mark.multinode,
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
    made = testbed.up(hosts=4, folder=folder, subnet=SUBNET)
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
    # Two cpu hosts (one to lose, one to take its replicas over), one gpu host.
    hosts = {"cpu": [_address(1), _address(2)], "gpu": [_address(3)]}
    for pool in spec["pools"]:
        pool.update(hosts=hosts[pool["name"]], max_workers=len(hosts[pool["name"]]))
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
    print(f"\ncluster up on the test bed (head and 3 workers over SSH, until every worker joined): {up_s:.0f} s")
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
    assert report["pools"]["cpu"]["hosts"] == [_address(1), _address(2)] and report["pools"]["cpu"]["gpus"] == 0
    assert report["pools"]["gpu"]["hosts"] == [_address(3)] and report["pools"]["gpu"]["gpus"] == 1
    assert report["pools"]["cpu"]["cpus"] == 4  # what the pool declares, not what the machine has
    # `up` read every host's Ray and Python (the workers' over SSH from the head) and found them all the same.
    assert state["versions"] == report["versions"] == str(this_machine())


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
    assert nodes["scorer_mlp"] == {_address(3): 1}, nodes  # pool gpu, and the one host with a GPU
    for deployment in ("ingress", "featurizer", "scorer_lr", "ensemble"):
        assert _address(0) not in nodes[deployment], nodes  # the head runs no replicas (num-cpus 0)
        assert sum(nodes[deployment].values()) >= 1, nodes


def _small_echo(tmp: Path) -> Path:
    spec = yaml.safe_load((ROOT / "examples/echo/app.yaml").read_text())
    spec.update(name="echo-tune", route_prefix="/echo-tune", ingress={"num_cpus": 0.1})
    spec["models"][0]["resources"] = {"num_cpus": 0.1}
    path = tmp / "echo-tune.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_loadtest_and_tune_from_here_run_against_the_cluster(cluster, tmp_path: Path) -> None:
    path, env, state = cluster
    env = {**env, "MODELFLEET_API_KEYS": f"{KEY}=invoke:*", "MODELFLEET_API_KEY": KEY}
    load = run_cli(
        "loadtest", str(FRAUD), "--address", state["address"], "--model", "fraud", "--users", "4", "--duration", "8s",
        "--report", str(tmp_path / "load"), env=env, timeout=300,
    )  # fmt: skip
    assert load.returncode == 0, load.stdout + load.stderr
    summary = json.loads((tmp_path / "load" / "summary.json").read_text())
    assert summary["config"]["url"].startswith(state["serve_url"]) and summary["failures"] == 0
    assert summary["requests"] > 10

    echo = _small_echo(tmp_path)  # its own route prefix, beside fraud; each trial is a deploy on the head
    tune = run_cli(
        "tune", str(echo), "--address", state["address"], "--slo-p95-ms", "500", "--max-trials", "2", "--users", "4",
        "--trial-duration", "6s", "--report", str(tmp_path / "tune"), env=env, timeout=900,
    )  # fmt: skip
    assert tune.returncode == 0, tune.stdout + tune.stderr
    record = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert len(record["trials"]) == 2 and all(t["error"] is None for t in record["trials"]), record["trials"]
    assert (tmp_path / "tune" / "echo-tune.tuned.yaml").exists()
    print(f"\ntune against the cluster: {record['summary']}")


@pytest.mark.timeout(900)
def test_losing_a_host_under_load_keeps_fraud_answering_and_its_replicas_come_back(cluster, bed, tmp_path) -> None:
    """fraud's pipeline with two replicas of every deployment, under load at serve_url; one cpu host loses every
    process at once (as a power loss). Serve moves the lost replicas to the hosts left."""
    from loadtests.chaos import BackgroundLoad

    path, env, state = cluster
    env = {**env, "MODELFLEET_API_KEYS": f"{KEY}=invoke:*"}
    # An app of its own beside fraud (a fresh deploy, not a rolling update of fraud on two busy cores), with every
    # deployment on CPU (the one GPU is fraud's) and two replicas of each.
    spec = yaml.safe_load(FRAUD.read_text())
    spec.update(name="sturdy", route_prefix="/sturdy", ingress={"num_cpus": 0.1, "num_replicas": 2})
    for model in spec["models"]:
        if "artifact" in model:
            model["artifact"]["uri"] = str(FRAUD.parent / model["artifact"]["uri"])
        model["resources"] = {"num_cpus": 0.1}
        model["autoscaling"] = {"min_replicas": 2, "max_replicas": 2}
    sturdy = tmp_path / "sturdy.yaml"
    sturdy.write_text(yaml.safe_dump(spec, sort_keys=False))
    deploy = run_cli(
        "deploy",
        str(sturdy),
        "--address",
        state["address"],
        "--host",
        "0.0.0.0",
        "--timeout",
        "5m",
        env=env,
        timeout=420,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    def placement() -> dict[str, dict[str, int]]:
        result = run_cli("status", "--address", state["address"], "--json", env=env, timeout=300)
        assert result.returncode in (0, 1), result.stdout + result.stderr  # 1: the head's answer got lost; again
        rows = json.loads(result.stdout) if result.returncode == 0 else []
        return {r["deployment"]: r["nodes"] for r in rows if r["app"] == "sturdy"}

    before = placement()
    lost = next(h for h in bed.hosts if h.address == _address(1))
    assert sum(n.get(lost.address, 0) for n in before.values()) > 0, before  # it holds replicas

    body = sample_v2(load_app_spec(FRAUD).model("fraud"))
    url = f"{state['serve_url']}/sturdy/v2/models/fraud/infer"
    during = BackgroundLoad(url, body, tmp_path / "during", 45, users=4, api_key=KEY)
    time.sleep(5)
    lost_at = time.monotonic()
    testbed.lose(lost, wait_s=10)

    def recovered() -> bool:
        now = placement()
        expected = dict.fromkeys(before, 2)
        return bool(now) and all(lost.address not in now[d] and sum(now[d].values()) == n for d, n in expected.items())

    deadline = time.monotonic() + 300
    while not recovered():
        assert time.monotonic() < deadline, f"fraud's replicas did not come back: {placement()}"
        time.sleep(5)
    recovered_s = time.monotonic() - lost_at
    loss = during.finish()
    after = BackgroundLoad(url, body, tmp_path / "after", 10, users=4, api_key=KEY).finish()
    report = _json(run_cli("cluster", "status", str(path), "--json", env=env, timeout=300))
    ok_during = 1 - loss["failures"] / max(loss["requests"], 1)
    print(
        f"\nlosing host {lost.address} (every process) under load: replicas back on the other hosts in "
        f"{recovered_s:.0f} s; during 45 s: {loss['requests']} requests, {loss['failures']} failed "
        f"({100 * ok_during:.2f}% ok); after: {after['requests']} requests, {after['failures']} failed"
    )
    assert report["pools"]["cpu"]["hosts"] == [_address(2)], report  # the lost host is gone from the cluster
    assert after["requests"] > 10 and after["failures"] == 0, after
    assert loss["requests"] > 50 and ok_during >= 0.99, loss
