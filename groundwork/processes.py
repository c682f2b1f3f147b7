"""Processes and ports: what starting, measuring and stopping servers needs, in one place, on psutil.

Whatever we start that starts more (Ray, `modelfleet run`, a local-sim head)
runs in a session of its own, so that everything it started can be found by
the session id and stopped by pid, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import psutil

__all__ = [
    "StartedProcess",
    "adopt_orphans",
    "alive",
    "end_processes",
    "free_port",
    "session_pids",
    "session_processes",
    "stop_process_tree",
    "stop_session",
]


# Ports Ray hands its workers' gRPC servers (`ray start`'s --min/--max-worker-port defaults).
RAY_WORKER_PORTS = range(10002, 20000)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, for a server about to start, that nothing else will take meanwhile:
    above Ray's worker ports and outside the kernel's ephemeral range. The kernel hands ephemeral ports to every
    bind to port 0 and every outgoing connection, and Ray's processes bind dozens so: a port picked from that range
    for a server that starts after Ray did was once taken by Ray itself first (Serve's proxy then failed to bind)."""
    low, high = _ephemeral_ports()
    candidates = [p for p in range(RAY_WORKER_PORTS.stop, 65536) if not low <= p <= high]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket(family) as probe:
            try:
                probe.bind((host, port))
            except OSError:  # in use
                continue
            return port
    with socket.socket(family) as probe:  # every one we tried is taken: any free port, ephemeral or not
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default where it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_pids(leader: int) -> list[int]:
    """Every process in the session `leader` leads: what it started, and only that."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.info["pid"]) == leader:
                found.append(process.info["pid"])
        except (ProcessLookupError, PermissionError):
            continue
    return found


def session_processes(leader: int) -> list[psutil.Process]:
    """The processes of the session `leader` leads (Ray's workers stay in it), plus its descendants that left it."""
    found: dict[int, psutil.Process] = {}
    try:
        head = psutil.Process(leader)
        found[leader] = head
        found.update((p.pid, p) for p in head.children(recursive=True))
    except psutil.NoSuchProcess:
        pass
    for pid in session_pids(leader):
        try:
            found.setdefault(pid, psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def stop_session(leader: int, grace_s: float = 90, first: signal.Signals = signal.SIGTERM) -> list[int]:
    """Signal `leader` with `first` and wait up to `grace_s` for it; then SIGTERM and SIGKILL whatever of its
    session is left. Returns the pids that outlived SIGKILL (none, unless the kernel is stuck)."""
    try:
        os.kill(leader, first)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(leader):
        time.sleep(0.5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = session_pids(leader)
        if not left:
            return []
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        time.sleep(2)
    return session_pids(leader)


def stop_process_tree(
    proc: subprocess.Popen,
    first: signal.Signals = signal.SIGINT,
    grace_s: float = 90,
    on_slow: Callable[[signal.Signals, float], None] | None = None,
    stragglers_s: float = 10,
) -> list[psutil.Process]:
    """Stop `proc`, the leader of a session of its own, as its user would: `first` (Ctrl-C for `modelfleet run`),
    then SIGTERM and SIGKILL if it hangs, each after a wait (`on_slow` hears of each wait that ran out); then end
    whatever of its session outlived it by `stragglers_s` (Ray's workers exit a moment after their driver), with
    SIGTERM, then SIGKILL. Returns those."""
    tree = [p for p in session_processes(proc.pid) if p.pid != proc.pid]
    for sig, wait_s in ((first, grace_s), (signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            if on_slow is not None:
                on_slow(sig, wait_s)
    return end_processes(tree, stragglers_s)


def adopt_orphans() -> bool:
    """Make this process the parent of every orphaned descendant (Linux's child subreaper), so a grandchild whose
    parent died still counts among `psutil.Process().children(recursive=True)` and can be ended by pid. False where
    the system has no such thing."""
    import ctypes

    pr_set_child_subreaper = 36
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def end_processes(processes: list[psutil.Process], grace_s: float = 10) -> list[psutil.Process]:
    """Wait up to `grace_s` for `processes` to exit by themselves (Ray's workers and agents follow their driver
    a moment later); then SIGTERM, and SIGKILL what ignores it. Returns those that had to be ended."""
    _, leftovers = psutil.wait_procs(processes, timeout=grace_s)
    for straggler in leftovers:
        with contextlib.suppress(psutil.Error):
            straggler.terminate()
    _, alive_ones = psutil.wait_procs(leftovers, timeout=min(5, grace_s))
    for straggler in alive_ones:
        with contextlib.suppress(psutil.Error):
            straggler.kill()
    psutil.wait_procs(alive_ones, timeout=5)  # gone (reaped by init) before the caller looks again
    return leftovers


class StartedProcess:
    """A context manager over `start()` and `stop()`: stopped on leaving, and also when starting fails half-way."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
