"""Launch and stop clusters: a simulated one on this machine (local-sim) for now.

local-sim is a real Ray head started with Ray's fake_multinode autoscaler
provider (`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`):
each pool's nodes are sets of Ray processes on this machine, with the CPUs and
logical GPUs the pool declares, that the autoscaler adds when replicas wait
for them and removes after the idle timeout. Everything listens on 127.0.0.1.

The head runs in a session of its own; its pid (which is the session id) is
kept in the cluster's state file, so `down` stops exactly the processes `up`
started, whatever happened in between.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from groundwork import local_rays
from groundwork.local_rays import modelfleet_home
from groundwork.processes import alive, free_port, stop_session
from groundwork.ray_env import LOOPBACK_ONLY_ENV, WHOLE_CLUSTER_STOPS_AT_ONCE, secure_ray_token
from providers.compute import pool_resource

from ._drivers import ANSWER
from .render import render
from .spec import ClusterSpec, Provider

__all__ = ["ClusterState", "LaunchError", "down", "load_state", "state_dir", "status", "up"]

START_TIMEOUT_S = 120


class LaunchError(Exception):
    """The cluster did not come up (or down); the message says why and where the log is."""


@dataclass
class ClusterState:
    name: str
    provider: str
    pid: int  # the head's `ray start --block`, leader of its own session
    address: str  # GCS host:port, for `modelfleet deploy --address`
    serve_url: str
    dashboard_url: str
    config: str  # the rendered cluster YAML
    log: str


def state_dir(name: str) -> Path:
    """Where a cluster's rendered config, log and state live (MODELFLEET_HOME, default ~/.modelfleet)."""
    return modelfleet_home() / "clusters" / name


def _recorded_state(name: str) -> ClusterState | None:
    path = state_dir(name) / "state.json"
    return ClusterState(**json.loads(path.read_text())) if path.exists() else None


def load_state(name: str) -> ClusterState | None:
    """The state of cluster `name` if it is up (its head still runs)."""
    state = _recorded_state(name)
    return state if state is not None and alive(state.pid) else None


def _ray_env() -> dict[str, str]:
    # Ray 2.60 heads require a token; clients (our CLI, `serve`) must opt in to send it.
    # local-sim is loopback only (Ray's single-machine mode): its drivers must run in that mode too.
    return {
        **os.environ,
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
        "RAY_USAGE_STATS_ENABLED": "0",
        **LOOPBACK_ONLY_ENV,
    }


def _wait_for_gcs(address: str, process: subprocess.Popen, log: Path) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise LaunchError(f"ray start exited ({process.returncode}) while starting:\n{tail}\n(full log: {log})")
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise LaunchError(f"the head did not listen on {address} within {START_TIMEOUT_S}s (log: {log})")


def _start_serve(address: str, serve_port: int) -> None:
    """Serve's proxy on the head's loopback, so `modelfleet deploy` finds it running and the app answers at
    serve_url."""
    result = subprocess.run(
        [sys.executable, "-m", "cluster._drivers", "start-serve", address, str(serve_port)],
        env=_ray_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode != 0:
        raise LaunchError(f"starting Serve on the head failed: {result.stderr.strip().splitlines()[-1:]}")


def up(spec: ClusterSpec, source: str) -> ClusterState:
    """Start a local-sim cluster and Serve on it; returns its state (also written to its state dir)."""
    if spec.provider.type is not Provider.local_sim:
        raise NotImplementedError(
            f"`cluster up` runs local-sim clusters for now; for {spec.provider.type.value}, `cluster render` then `ray "
            "up`"
        )
    running = load_state(spec.name)
    if running is not None:
        raise LaunchError(
            f"cluster {spec.name!r} is already up (head pid {running.pid}, {running.address}); `cluster down` it first"
        )
    home = state_dir(spec.name)
    home.mkdir(parents=True, exist_ok=True)
    gcs, dashboard, serve_port = free_port(), free_port(), free_port()
    address = f"127.0.0.1:{gcs}"
    config = home / "cluster.yaml"
    config.write_text(render(spec, Provider.local_sim, source=source, gcs_address=address))
    head, _ = spec.nodes(Provider.local_sim)
    log = home / "ray-start.log"
    secure_ray_token()  # `ray start --head` writes a token it generates into ~/.ray: private from the start
    ray = Path(sys.executable).parent / "ray"
    argv = [
        str(ray),
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--autoscaling-config={config}",
        f"--num-cpus={head.vcpus}",
        f"--num-gpus={head.gpus}",
        "--disable-usage-stats",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=home,
            env={**_ray_env(), "RAY_FAKE_CLUSTER": "1", **WHOLE_CLUSTER_STOPS_AT_ONCE},
            start_new_session=True,
        )
    state = ClusterState(
        spec.name,
        spec.provider.type.value,
        process.pid,
        address,
        f"http://127.0.0.1:{serve_port}",
        f"http://127.0.0.1:{dashboard}",
        str(config),
        str(log),
    )
    try:
        _wait_for_gcs(address, process, log)
        secure_ray_token()
        _start_serve(address, serve_port)
    except BaseException:
        stop_session(process.pid)
        raise
    (home / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    local_rays.record("local-sim", spec.name, address, state.serve_url, pid=process.pid)  # for `deploy`, `status`
    return state


def down(name: str) -> ClusterState | None:
    """Stop the cluster `up` started (None if it was not up); no process of it remains after."""
    state = _recorded_state(name)
    if state is None:
        return None
    left = stop_session(state.pid)  # `ray start --block` stops what it started on SIGTERM
    if left:
        raise LaunchError(f"processes of cluster {name!r} outlived SIGKILL: {left}")
    (state_dir(name) / "state.json").unlink()
    local_rays.forget(state.pid)
    return state


def status(state: ClusterState, spec: ClusterSpec) -> dict:
    """DESIGN.md's `cluster status --json`: address, serve_url, and per pool its alive node count."""
    env = {**_ray_env(), "RAY_SCHEDULER_EVENTS": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "cluster._drivers", "nodes", state.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    answer = [line.removeprefix(ANSWER) for line in result.stdout.splitlines() if line.startswith(ANSWER)]
    if result.returncode != 0 or not answer:
        raise LaunchError(f"cannot read the cluster's nodes: {result.stderr.strip().splitlines()[-1:]}")
    nodes = json.loads(answer[-1])
    pools = {}
    for pool in spec.pools:
        members = [n["resources"] for n in nodes if n["resources"].get(pool_resource(pool.name), 0) > 0]
        pools[pool.name] = {
            "nodes": len(members),
            "gpus": sum(int(n.get("GPU", 0)) for n in members),
            "min_workers": pool.min_workers,
            "max_workers": pool.max_workers,
        }
    return {
        "name": state.name,
        "provider": state.provider,
        "address": state.address,
        "serve_url": state.serve_url,
        "dashboard_url": state.dashboard_url,
        "head_pid": state.pid,
        "pools": pools,
    }
