"""The app under test, as a `modelfleet run` subprocess; and the CPU and memory of process groups.

The app runs in a session of its own, so its whole process tree (Ray's
workers included) can be measured and, whatever happens, stopped by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from groundwork.processes import StartedProcess, free_port, session_processes, stop_process_tree

__all__ = ["AppProcess", "AppStartFailed", "DeployedApp", "ProcessGroup", "free_port", "session_processes"]


class ProcessGroup:
    """CPU (cores, since the last sample) and resident memory (MB) of some processes, found afresh at each sample."""

    def __init__(self, pids: list[int] | None = None, session_leader: int | None = None):
        self.pids = pids or []
        self.session_leader = session_leader
        self._last: tuple[float, dict[int, float]] | None = None

    def processes(self) -> list[psutil.Process]:
        if self.session_leader is not None:
            return session_processes(self.session_leader)
        return [p for pid in self.pids if (p := _process(pid))]

    def sample(self) -> tuple[float | None, float | None]:
        """(cores, MB); cores is None on the first call (a rate needs two readings)."""
        now, cpu, rss = time.monotonic(), {}, 0
        for proc in self.processes():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu[proc.pid] = times.user + times.system + times.children_user + times.children_system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        cores = None
        if self._last is not None:
            then, before = self._last
            # A process that started since the last sample counts from zero; one that ended is left out.
            cores = sum(t - before.get(pid, 0.0) for pid, t in cpu.items()) / max(now - then, 1e-6)
        self._last = (now, cpu)
        return cores, rss / 2**20


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


class AppStartFailed(RuntimeError):
    """`modelfleet run` exited or did not become ready; the message carries the end of its log."""


@dataclass(frozen=True)
class DeployedApp:
    """An app on a cluster that runs without us (`--address`): nothing to start or stop, no server process of this
    machine to measure. `ray_address` is where the tuner deploys its trials; `watch_replicas`: whether a Ray driver
    here can read its replicas (not for a cluster whose drivers must run on its head)."""

    url: str
    ray_address: str
    watch_replicas: bool = False
    group: None = None


class AppProcess(StartedProcess):
    """`modelfleet run SPEC` on a free loopback port, in its own session; a context manager that always stops it."""

    watch_replicas = True

    def __init__(
        self, spec_path: Path, log_path: Path, startup_timeout_s: float = 300, env: dict[str, str] | None = None
    ):
        self.spec_path = spec_path
        self.log_path = log_path
        self.ready_path = log_path.with_name(log_path.stem + ".ready.json")  # `run --ready-file`: its address, once up
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.ray_address: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def group(self) -> ProcessGroup:
        if self.proc is None:
            raise RuntimeError("the app is not started")
        return ProcessGroup(session_leader=self.proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log_path})"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "modelfleet",
            "run",
            str(self.spec_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ready-file",
            str(self.ready_path),
        ]
        self.ready_path.unlink(missing_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})},
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.ready_path.exists():  # `run` writes it once the app answers, whole (an atomic rename)
            if self.proc.poll() is not None:
                raise AppStartFailed(
                    f"modelfleet run exited ({self.proc.returncode}) while starting:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AppStartFailed(
                    f"modelfleet run not ready after {self.startup_timeout_s:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.5)
        self.ray_address = json.loads(self.ready_path.read_text())["ray_address"]

    def stop(self, grace_s: float = 90) -> None:
        """Ctrl-C (what `run` expects), then SIGTERM and SIGKILL if it hangs; then whatever of its session outlived
        it."""
        if self.proc is None:
            return
        stop_process_tree(self.proc, signal.SIGINT, grace_s)
        self.proc = None
