"""Faults under load, the long versions: how many requests are lost, with and without modelfleet's handling.

    python -m bench.faults [--kill-seconds 60] [--updates 20] [--node-losses 3] [--users 4] [--cases ...]

One `modelfleet run` of bench/faults_app.yaml (an echo deployed with two
replicas) per case, loaded by `modelfleet loadtest` on 127.0.0.1:
1. replica deaths: a replica SIGKILLed every 5 s (when both are up), with the
   ingress's retry of calls whose replica died, and again without it;
2. ingress replica deaths: two ingress replicas share the app's port, and
   one is SIGKILLed every 5 s: what in-flight requests and new connections see;
3. rolling updates: N consecutive `modelfleet deploy` version bumps of the
   running app, through the app's own port (its ingress replicas hand the
   port over with SO_REUSEPORT);
4. a failed update: a version that crashes on its first request;
5. node losses on a local-sim cluster (`cluster up`): the two replicas on two
   nodes of its cpu pool, and every process of one node SIGKILLed at once;
   the replacement replica needs a new node from Ray's autoscaler.
What counts is the load generator's own tally of failed requests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from loadtests.app_process import AppProcess
from loadtests.chaos import BackgroundLoad, ReplicaKiller, kill_node, replaced_elsewhere, replica_nodes

from ._harness import LOGS, REPO, console, interrupt_on_signals, print_table, write_results

APP = REPO / "bench" / "faults_app.yaml"
ENV = {"PYTHONPATH": str(REPO)}  # replicas import the crashing version from tests.fixtures
ECHO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


def _spec(folder: Path, **changes) -> Path:
    """faults_app.yaml with `ingress` and `model` changes, written into `folder`."""
    spec = yaml.safe_load(APP.read_text())
    spec["ingress"] = {**spec.get("ingress", {}), **changes.get("ingress", {})}
    spec["models"][0].update(changes.get("model", {}))
    path = folder / f"faults-{len(list(folder.glob('faults-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`modelfleet ARGS`: (exit code, the last line it printed on stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "modelfleet", *args], capture_output=True, text=True, cwd=REPO, timeout=600, env=env
    )
    return done.returncode, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def replica_deaths(folder: Path, seconds: float, users: int, retry: bool) -> dict:
    spec = _spec(folder, ingress={"retry_on_replica_death": retry})
    with AppProcess(spec, LOGS / f"faults-kills-{'retry' if retry else 'no-retry'}.log", env=ENV) as app:
        load = BackgroundLoad(f"{app.url}/v2/models/echo/infer", ECHO, folder / f"kills-{retry}", seconds, users)
        killer = ReplicaKiller("faults", "echo", every_s=5, min_running=2, duration_s=seconds - 2).start()
        try:
            summary = load.finish()
        finally:
            killer.stop()
    return {"case": f"replica deaths, retry {'on' if retry else 'off'}", "kills": len(killer.kills), **_counts(summary)}


def ingress_deaths(folder: Path, seconds: float, users: int) -> dict:
    """Two ingress replicas share the app's port (SO_REUSEPORT); one is SIGKILLed every 5 s."""
    spec = _spec(folder, ingress={"num_replicas": 2})
    with AppProcess(spec, LOGS / "faults-ingress-kills.log", env=ENV) as app:
        load = BackgroundLoad(f"{app.url}/v2/models/echo/infer", ECHO, folder / "ingress-kills", seconds, users)
        killer = ReplicaKiller(
            "faults", "ingress", every_s=5, min_running=2, duration_s=seconds - 2, listening_on=app.port
        ).start()
        try:
            summary = load.finish()
        finally:
            killer.stop()
    return {
        "case": "ingress replica deaths (2 share the port)",
        "kills": len(killer.kills),
        **_counts(summary),
        "errors": summary.get("errors", {}),
    }


def rolling_updates(folder: Path, updates: int, users: int) -> list[dict]:
    results = []
    with AppProcess(_spec(folder), LOGS / "faults-updates.log", env=ENV) as app:
        budget_s = 30 * updates + 30
        load = BackgroundLoad(f"{app.url}/v2/models/echo/infer", ECHO, folder / "updates", budget_s, users)
        started, done = time.monotonic(), 0
        for n in range(2, 2 + updates):
            code, last = _cli(
                "deploy",
                str(_spec(folder, model={"version": str(n)})),
                "--address",
                app.ray_address,
                "--timeout-s",
                "300",
            )
            done += code == 0
            if code != 0:
                console.print(f"update {n} failed: {last}")
        updated_s = time.monotonic() - started
        crash = {"format": "python", "module": "tests.fixtures.tiny:CrashOnRequest", "version": "crashes"}
        code, last = _cli("deploy", str(_spec(folder, model=crash)), "--address", app.ray_address, "--timeout-s", "300")
        summary = load.finish()
    results.append(
        {"case": f"{updates} rolling updates ({done} succeeded, {updated_s:.0f} s)", "kills": 0, **_counts(summary)}
    )
    results.append(
        {"case": "then a version crashing on its first request", "kills": 0, "deploy_exit": code, "deploy_said": last}
    )
    return results


def node_losses(folder: Path, losses: int, seconds: float, users: int) -> list[dict]:
    """local-sim: the echo's two replicas on two 1-CPU nodes of the cpu pool; one node is lost `losses` times in
    turn."""
    cluster = yaml.safe_load((REPO / "examples/clusters/local-sim.yaml").read_text())
    cluster.update(name="bench-faults-sim", idle_timeout_minutes=0.5)
    for pool in cluster["pools"]:
        pool["cpus"] = 1  # one echo replica (1 CPU) per node
    cluster_path = folder / "local-sim.yaml"
    cluster_path.write_text(yaml.safe_dump(cluster))
    env = {**os.environ, **ENV, "MODELFLEET_HOME": str(folder / "home")}
    code, last = _cli("cluster", "up", str(cluster_path), env=env)
    if code != 0:
        raise RuntimeError(f"cluster up failed: {last}")
    state = json.loads((folder / "home/clusters/bench-faults-sim/state.json").read_text())
    rows = []
    try:
        code, last = _cli(
            "deploy",
            str(_spec(folder, model={"resources": {"pool": "cpu", "num_cpus": 1}})),
            "--address",
            state["address"],
            "--timeout-s",
            "300",
            env=env,
        )
        if code != 0:
            raise RuntimeError(f"deploy onto local-sim failed: {last}")
        url = f"{state['serve_url']}/v2/models/echo/infer"
        for n in range(1, losses + 1):
            load = BackgroundLoad(url, ECHO, folder / f"node-loss-{n}", seconds, users)
            time.sleep(5)
            lost = replica_nodes("faults", "echo")[0]
            killed, lost_at = kill_node(lost), time.monotonic()
            recovered_s = _wait_for_replacement(lost, timeout_s=300) - lost_at
            summary = load.finish()
            console.print(f"node loss {n}: killed {killed}")
            rows.append(
                {
                    "case": f"local-sim node loss {n}: replica back on a new node after {recovered_s:.0f} s",
                    "kills": 1,
                    **_counts(summary),
                }
            )
        after = BackgroundLoad(url, ECHO, folder / "node-loss-after", 20, users).finish()
        rows.append({"case": "local-sim, after the node losses (20 s)", "kills": 0, **_counts(after)})
    finally:
        _cli("cluster", "down", str(cluster_path), env=env)
    return rows


def _wait_for_replacement(lost: str, timeout_s: float) -> float:
    """When both replicas run again, neither on node `lost` (monotonic time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if replaced_elsewhere("faults", "echo", lost, replicas=2):
            return time.monotonic()
        time.sleep(0.5)
    raise RuntimeError(f"no replacement replica {timeout_s:.0f} s after node {lost} was lost")


def _counts(summary: dict) -> dict:
    requests, failures = summary["requests"], summary["failures"]
    return {
        "requests": requests,
        "failures": failures,
        "rps": summary["rps"],
        "success_pct": 100.0 * (requests - failures) / requests if requests else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-seconds", type=float, default=60)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--node-losses", type=int, default=3)
    cases = ["kills", "ingress", "updates", "node"]
    parser.add_argument("--cases", nargs="+", choices=cases, default=cases)
    args = parser.parse_args()
    interrupt_on_signals()
    LOGS.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    rows = []
    if "kills" in args.cases:
        rows += [replica_deaths(folder, args.kill_seconds, args.users, retry=retry) for retry in (True, False)]
    if "ingress" in args.cases:
        rows.append(ingress_deaths(folder, args.kill_seconds, args.users))
    if "updates" in args.cases:
        rows += rolling_updates(folder, args.updates, args.users)
    if "node" in args.cases:
        rows += node_losses(folder, args.node_losses, args.kill_seconds, args.users)
    print_table(
        "faults under load (modelfleet loadtest, 127.0.0.1)",
        ["case", "kills", "requests", "failed", "success", "req/s"],
        [
            [
                r["case"],
                str(r.get("kills", "")),
                str(r.get("requests", "")),
                str(r.get("failures", "")),
                f"{r['success_pct']:.3f}%"
                if "success_pct" in r
                else f"deploy exit {r['deploy_exit']}: {r['deploy_said'][:80]}",
                f"{r['rps']:.0f}" if "rps" in r else "",
            ]
            for r in rows
        ],
    )
    console.print(f"results: {write_results('faults', {'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
