"""groundwork.processes: stopping a process and everything its session started, whatever it ignores."""

from __future__ import annotations

import signal
import subprocess
import sys

from groundwork.processes import session_pids, stop_process_tree

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
