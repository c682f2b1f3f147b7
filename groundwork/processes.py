"""Processes and ports: what starting, measuring and stopping servers needs, in one place, on psutil.

Whatever we start that starts more (Ray, `modelfleet run`, a local-sim head)
runs in a session of its own, so that everything it started can be found by
the session id and stopped by pid, whatever happened in between.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil

__all__ = ["alive", "free_port", "session_pids", "session_processes", "stop_session"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for a server about to start)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


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
