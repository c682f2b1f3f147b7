"""Faults on purpose, for fault tests and benchmarks: kill a model's replicas while load runs.

Bounded like every load here: the load stops after its duration, a killer
stops after its own or when told, and it only ever signals replicas of the
app it was pointed at on this machine. The load runs as `modelfleet loadtest`
in a process of its own: Locust's gevent never shares a process with the
killer's threads, and what counts is the generator's own tally of failures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = [
    "BackgroundLoad",
    "ReplicaKiller",
    "kill_node",
    "node_of",
    "replaced_elsewhere",
    "replica_nodes",
    "replica_pids",
]

# Ray's fake_multinode provider (local-sim) starts each simulated node's raylet with this variable set to the
# node's id; every process the raylet starts (workers, replicas, agents) inherits it. Head processes lack it.
SIMULATED_NODE_ENV = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"
# `modelfleet loadtest` exits this when requests failed (cli/load.py REQUESTS_FAILED); its summary is written, and
# failures under faults are what the callers count.
LOADTEST_REQUESTS_FAILED = 3
LOADTEST_INTERRUPTED = 130  # stopped by Ctrl-C (BackgroundLoad.stop): its summary covers what ran


class BackgroundLoad:
    """`modelfleet loadtest URL --payload ...` for at most `seconds`, started now; `finish()` waits for its end,
    `stop()` ends it now (Ctrl-C: it reports what ran); both return its summary.json, failed requests or not."""

    def __init__(self, url: str, body: dict, folder: Path, seconds: float, users: int = 4, api_key: str | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.users = users
        payload, self.report, self.log = folder / "payload.json", folder / "report", folder / "loadtest.log"
        payload.write_text(json.dumps(body))
        command = [
            sys.executable,
            "-m",
            "modelfleet",
            "loadtest",
            url,
            "--payload",
            str(payload),
            "--users",
            str(users),
            "--duration",
            f"{seconds:g}s",
            "--report",
            str(self.report),
        ] + (["--api-key", api_key] if api_key else [])
        self.seconds = seconds
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> dict:
        """End the load now; its summary covers the seconds it ran (`interrupted_at_s`), or all of them if it had
        already ended."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self) -> dict:
        try:
            code = self.process.wait(timeout=self.seconds + 120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        if code not in (0, LOADTEST_REQUESTS_FAILED, LOADTEST_INTERRUPTED):
            raise RuntimeError(f"modelfleet loadtest exited {code}:\n{self.log.read_text(errors='replace')[-3000:]}")
        return json.loads((self.report / "summary.json").read_text())


def replica_pids(app: str, deployment: str, listening_on: int | None = None) -> list[int]:
    """Processes of `deployment`'s replicas in Serve app `app` on this machine (Ray titles them
    ray::ServeReplica:APP:DEPLOYMENT).

    `listening_on`: only those already listening on this TCP port (an ingress replica that has started its listener).
    """
    title = f"ray::ServeReplica:{app}:{deployment}"
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        name = cmdline[0].strip() if cmdline else ""
        # While a replica runs a call Ray appends the method: ray::ServeReplica:APP:DEPLOYMENT.handle_request...
        if name.split(".", 1)[0] == title and (listening_on is None or _listens(process, listening_on)):
            found.append(process.info["pid"])
    return sorted(found)


def node_of(pid: int) -> str | None:
    """The local-sim node id process `pid` runs on; None for the head (or a process that is gone)."""
    try:
        return psutil.Process(pid).environ().get(SIMULATED_NODE_ENV)
    except psutil.Error:
        return None


def replica_nodes(app: str, deployment: str) -> list[str | None]:
    """The local-sim node each replica of app/deployment runs on (None: the head)."""
    return [node_of(pid) for pid in replica_pids(app, deployment)]


def replaced_elsewhere(app: str, deployment: str, lost: str, replicas: int) -> bool:
    """After node `lost` went: all `replicas` run again, on worker nodes, none on the lost one."""
    nodes = replica_nodes(app, deployment)
    return len(nodes) == replicas and None not in nodes and lost not in nodes


def kill_node(node_id: str) -> dict[int, str]:
    """Lose local-sim node `node_id` at once: SIGKILL its raylet and everything it started, as a power cut would.

    Only processes carrying the node's id are signalled; returns them, pid to
    title. Ray notices the dead node, the autoscaler forgets it and launches
    a replacement if replicas still need one.
    """
    killed = {}
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        pid, cmdline = process.info["pid"], process.info["cmdline"] or [""]
        if pid != os.getpid() and node_of(pid) == node_id:
            try:
                os.kill(pid, signal.SIGKILL)
                killed[pid] = cmdline[0].strip() if cmdline[0].startswith("ray::") else process.info["name"]
            except ProcessLookupError:
                continue
    return killed


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections(kind="tcp"))
    except psutil.Error:
        return False


@dataclass
class ReplicaKiller:
    """Every `every_s`, SIGKILL one replica of app/deployment, but only while at least `min_running` are up.

    Waiting for the full count keeps a kill a fault the deployment can absorb
    (another replica answers) rather than an outage; `kills` records each one.
    """

    app: str
    deployment: str
    every_s: float = 5.0
    min_running: int = 2
    duration_s: float = 60.0
    listening_on: int | None = None  # for ingress replicas: up means listening on the app's port, not merely alive
    kills: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, pid)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ReplicaKiller:
        self._thread = threading.Thread(target=self._run, name="replica-killer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        started = time.monotonic()
        next_kill = started + self.every_s
        while not self._stop.is_set() and time.monotonic() - started < self.duration_s:
            now = time.monotonic()
            pids = replica_pids(self.app, self.deployment, self.listening_on)
            if now >= next_kill and len(pids) >= self.min_running:
                victim = pids[len(self.kills) % len(pids)]
                try:
                    os.kill(victim, signal.SIGKILL)
                    self.kills.append((round(now - started, 1), victim))
                except ProcessLookupError:
                    pass
                next_kill = now + self.every_s
            self._stop.wait(0.2)
