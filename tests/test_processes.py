"""groundwork.processes: stopping a process and everything its session started, whatever it ignores."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from groundwork.processes import RAY_WORKER_PORTS, _ephemeral_ports, free_port, session_pids, stop_process_tree

# A leader that ignores Ctrl-C and starts a child which outlives it (as Ray's workers outlive their driver).
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
straggler = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
subprocess.Popen([sys.executable, "-c", straggler])
print("ready", flush=True)
time.sleep(60)
"""


def test_a_stubborn_leader_and_its_straggler_are_stopped() -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert leader.stdout is not None and leader.stdout.readline().strip() == "ready"
    slow = []
    leftovers = stop_process_tree(
        leader, signal.SIGINT, grace_s=1, on_slow=lambda sig, s: slow.append(sig), stragglers_s=1
    )
    assert slow == [signal.SIGINT]  # Ctrl-C was ignored; SIGTERM ended the leader
    assert leader.returncode == -signal.SIGTERM
    assert len(leftovers) == 1, leftovers  # the child that ignores SIGTERM outlived its leader: it got SIGKILL
    assert session_pids(leader.pid) == [], "nothing of the session is left"


def test_a_free_port_is_one_neither_the_kernel_nor_ray_hands_out() -> None:
    """Servers start seconds after their port is picked, and Ray binds dozens of ephemeral ports meanwhile."""
    low, high = _ephemeral_ports()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1, "picked at random, so parallel test workers seldom pick the same"
    for port in ports:
        assert port >= RAY_WORKER_PORTS.stop and not low <= port <= high, port
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))  # and free
