"""`modelfleet cluster up|status|down` on local-sim: a real Ray head with Ray's fake_multinode autoscaler.

An app with a GPU-pool model (the fraud example's GPU scorer) makes the autoscaler add a simulated GPU node, which
goes away after the idle timeout once the app is removed; `down` leaves no process
of the cluster behind. The cluster runs in its own session.

In `make test-cluster` with the on-prem test bed (the `multinode` marker): a Ray of several nodes is too much to
share two cores with the rest of `make test`.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import httpx
import pytest
import yaml

from groundwork.processes import session_pids
from loadtests.chaos import BackgroundLoad, kill_node, replaced_elsewhere, replica_nodes
from tests.fixtures.browser import RUN_PLOTS, assert_drawn
from tests.helpers import ROOT, delete_app, listening_addresses, not_on_loopback, ray_driver, run_cli, wait_until

pytestmark = pytest.mark.multinode


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local-sim")
    spec = yaml.safe_load((ROOT / "examples/clusters/local-sim.yaml").read_text())
    spec.update(name="mf-test-sim", idle_timeout_minutes=0.15)  # 9 s: the GPU test waits for its node to go
    for pool in spec["pools"]:
        pool.update(cpus=1, max_workers=2 if pool["name"] == "cpu" else 1)  # cpu: one node per sturdy replica
    path = tmp / "local-sim.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {
        **{k: v for k, v in os.environ.items() if k != "MODELFLEET_API_KEYS"},
        "MODELFLEET_HOME": str(tmp / "home"),
        # Ray's autoscaler decides every second instead of every 5: these tests wait on its decisions (nodes added for
        # pending replicas, idle nodes removed).
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    }
    result = run_cli("cluster", "up", str(path), "--json", env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads(result.stdout)  # what `up --json` prints is what it records
    assert state == json.loads((tmp / "home/clusters/mf-test-sim/state.json").read_text())
    try:
        yield path, env, state
    finally:
        down = run_cli("cluster", "down", str(path), env=env, timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        assert session_pids(state["pid"]) == [], "cluster down left processes of the cluster running"


def _last_json(stdout: str) -> dict:
    """A driver's stdout also carries Ray's autoscaler events: the answer is its last JSON line."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def _status(path: Path, env: dict) -> dict:
    result = run_cli("cluster", "status", str(path), "--json", env=env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.own_ray
def test_up_twice_is_refused_while_it_runs(cluster) -> None:
    path, env, _ = cluster
    again = run_cli("cluster", "up", str(path), env=env, timeout=120)
    assert again.returncode == 1 and "already up" in again.stderr


REPLICA_NODES = """
from ray.util.state import list_actors
gpu_nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("pool:gpu")]
actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
replicas = {a.class_name: a.node_id for a in actors if a.class_name.startswith("ServeReplica:gpu-scorer:")}
print(json.dumps({"gpu_nodes": gpu_nodes, "replicas": replicas}))
"""
GPU_APP = "gpu-scorer"


def _gpu_scorer_app(folder: Path) -> Path:
    """examples/fraud's scorer_mlp as it is there (gpu pool, one GPU), alone in an app: the head has no GPU."""
    fraud = yaml.safe_load((ROOT / "examples/fraud/app.yaml").read_text())
    scorer = next(m for m in fraud["models"] if m["name"] == "scorer_mlp")
    scorer["artifact"]["uri"] = str(ROOT / "examples/fraud" / scorer["artifact"]["uri"])
    path = folder / f"{GPU_APP}.yaml"
    path.write_text(yaml.safe_dump({"name": GPU_APP, "route_prefix": f"/{GPU_APP}", "models": [scorer]}))
    return path


@pytest.mark.slow
@pytest.mark.own_ray
def test_a_gpu_model_gets_a_new_gpu_node_which_goes_once_idle(cluster, tmp_path: Path) -> None:
    """A model that asks for the gpu pool and a GPU makes the autoscaler add a gpu node for its replica (the head has
    none); once the app is removed, the idle node goes."""
    from examples.fraud.train import ensure_trained

    ensure_trained()
    path, env, state = cluster
    before = _status(path, env)
    assert before["address"] == state["address"] and before["serve_url"].startswith("http://127.0.0.1:")
    assert before["pools"]["gpu"]["nodes"] == 0 and before["pools"]["cpu"]["nodes"] == 0  # min_workers 0
    started = time.monotonic()
    app = _gpu_scorer_app(tmp_path)
    deploy = run_cli("deploy", str(app), "--address", state["address"], "--timeout-s", "300", env=env, timeout=420)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr[-3000:]
    features = {"name": "features", "datatype": "FP32", "shape": [4, 16], "data": [0.5] * 64}
    url = f"{state['serve_url']}/{GPU_APP}/v2/models/scorer_mlp/infer"
    response = httpx.post(url, json={"inputs": [features]}, timeout=120)
    first_answer_s = time.monotonic() - started
    assert response.status_code == 200, response.text
    score = response.json()["outputs"][0]
    assert score["shape"] == [4] and all(0 <= p <= 1 for p in score["data"]), score
    # BENCHMARKS.md records this: a replica that needs a node the cluster does not have yet.
    print(f"local-sim: deploy to first answer from a replica on a new gpu node {first_answer_s:.1f}s")

    placed = ray_driver(state["address"], "import json\n" + REPLICA_NODES, timeout=120)
    assert placed.returncode == 0, placed.stderr[-3000:]
    where = _last_json(placed.stdout)
    assert where["replicas"]["ServeReplica:gpu-scorer:scorer_mlp"] in where["gpu_nodes"], where
    during = _status(path, env)
    assert during["pools"]["gpu"]["nodes"] == 1 and during["pools"]["gpu"]["gpus"] == 1
    # The head, its simulated nodes and every Ray process they run listen on loopback only.
    assert listening_addresses(state["pid"]) and not_on_loopback(state["pid"]) == set()

    delete_app(state["address"], GPU_APP, wait=True)
    wait_until(
        lambda: _status(path, env)["pools"]["gpu"]["nodes"] == 0,
        180,
        "the idle gpu node to go once the app is removed",
        None,
        Path(state["log"]),
        every_s=2,  # each look is a `cluster status` (a Ray driver)
    )


SIM_APP = "sturdy-sim"
ECHO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


@pytest.mark.slow
@pytest.mark.own_ray
def test_a_lost_node_under_load_loses_no_request_and_its_replica_comes_back_elsewhere(cluster, tmp_path: Path) -> None:
    """Two echo replicas, one per node of the cpu pool, under load; one node loses every process at once.

    The ingress retries the calls that were on the lost replica on the other
    one; Serve starts a replacement, for which the autoscaler adds a new node.
    """
    path, env, state = cluster
    spec = yaml.safe_load((ROOT / "examples/echo/app.yaml").read_text())
    spec.update(name=SIM_APP, route_prefix=f"/{SIM_APP}", ingress={"num_cpus": 0.1})
    spec["models"][0].update(
        resources={"pool": "cpu", "num_cpus": 1}, autoscaling={"min_replicas": 2, "max_replicas": 2}
    )
    app = tmp_path / "sturdy-sim.yaml"
    app.write_text(yaml.safe_dump(spec))
    deploy = run_cli("deploy", str(app), "--address", state["address"], "--timeout-s", "300", env=env, timeout=420)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr[-3000:]
    before = replica_nodes(SIM_APP, "echo")
    assert len(before) == 2 and None not in before and len(set(before)) == 2, before  # one per cpu node
    url = f"{state['serve_url']}/{SIM_APP}/v2/models/echo/infer"

    during = BackgroundLoad(url, ECHO, tmp_path / "during", 240)  # stopped once the replacement runs
    time.sleep(2)  # the load is on before the loss
    lost = before[0]
    killed, lost_at = kill_node(lost), time.monotonic()
    assert "raylet" in killed.values(), f"node {lost} was not lost: killed {killed}"

    wait_until(
        lambda: replaced_elsewhere(SIM_APP, "echo", lost, replicas=2),
        180,
        "a replacement replica on a new node",
        None,
        Path(state["log"]),
    )
    recovered_s = time.monotonic() - lost_at
    during_summary = during.stop()
    after = BackgroundLoad(url, ECHO, tmp_path / "after", 3).finish()
    print(
        f"\nlocal-sim node loss: {sorted(killed.values())} of node {lost[-5:]} killed, replica back on another node in "
        f"{recovered_s:.0f} s; during: {during_summary['requests']} requests, {during_summary['failures']} failed; "
        f"after: {after['requests']} requests, {after['failures']} failed"
    )
    assert during_summary["requests"] > 100 and during_summary["failures"] == 0, during_summary
    assert after["requests"] > 20 and after["failures"] == 0, after
    # Left deployed: the next test's app fits beside it, and `cluster down` stops both (deleting it cost a driver).


@pytest.mark.slow
@pytest.mark.own_ray
def test_loadtest_of_an_app_on_the_cluster_writes_a_report(cluster, tmp_path: Path, browser) -> None:
    """The operator's path: deploy examples/digits to the cluster, then `loadtest APP.yaml --address` measures it
    from here (the replica counts read from the cluster's Serve) and writes the report. (`tune`'s test covers the
    app that `loadtest` and `tune` start and stop themselves.)"""
    path, env, state = cluster
    spec = yaml.safe_load((ROOT / "examples/digits/app.yaml").read_text())
    model = spec["models"][0]
    model["artifact"]["uri"] = str(ROOT / "examples/digits" / model["artifact"]["uri"])
    spec.update(name="digits-sim", route_prefix="/digits-sim")
    app = tmp_path / "digits-sim.yaml"
    app.write_text(yaml.safe_dump(spec))
    deploy = run_cli("deploy", str(app), "--address", state["address"], "--timeout-s", "300", env=env, timeout=420)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr[-3000:]
    out = tmp_path / "out"
    command = ["loadtest", str(app), "--address", state["address"], "--duration", "6s", "--users", "8"]
    result = run_cli(*command, "--report", str(out), env=env, timeout=400)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == 0 and summary["requests"] > 0
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
    assert summary["requests"] == pytest.approx(summary["rps"] * summary["duration_s"], rel=0.02)
    assert 5 <= summary["duration_s"] <= 10
    assert summary["server_requests"] == summary["requests"]
    assert summary["endpoints"][0]["mean_batch_rows"] >= 1
    assert {"digits", "ingress"} <= set(summary["replicas"][0]["replicas"]), "replica counts come from Serve"
    assert summary["generator_cpu_cores"] > 0
    with open(out / "locust_stats.csv", newline="") as stats:
        aggregated = next(row for row in csv.DictReader(stats) if row["Name"] == "Aggregated")
    assert int(aggregated["Request Count"]) == summary["requests"]
    assert_drawn(
        browser, out / "index.html", dict.fromkeys(RUN_PLOTS, "scatter")
    )  # left deployed: `cluster down` stops it
