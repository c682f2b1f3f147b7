"""cluster.testbed: hosts that are network namespaces with sshd, each with its own address, processes and Ray
temporary folder.

What a cluster launcher and Ray need from separate machines, checked host by host over SSH as the launcher
reaches them; losing a host ends every process of it; `down` leaves nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import testbed

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the test bed needs root (namespaces, bridges, mounts)"),
    pytest.mark.skipif(
        not testbed.SSHD.exists(), reason="Debian's openssh-server is not installed (`make test` installs it)"
    ),
]

SUBNET = 231  # 10.231.0.0/24: apart from the default bed's, so a user's bed and the tests' never meet


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _leftovers(bed: testbed.Testbed) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = [h.name for h in bed.hosts if h.name in names]
    found += [line.split(":")[1].strip() for line in links.splitlines() if f" {bed.tag}" in line]
    found += [str(h.pid) for h in bed.hosts if Path(f"/proc/{h.pid}").exists()]
    return found + ([bed.folder] if Path(bed.folder).exists() else [])


def test_hosts_are_apart_reachable_over_ssh_and_gone_after_down(tmp_path: Path) -> None:
    bed = testbed.up(hosts=3, folder=tmp_path / "bed", subnet=SUBNET)
    try:
        addresses = [h.address for h in bed.hosts]
        assert addresses == [f"10.{SUBNET}.0.{10 + i}" for i in range(3)]
        for host in bed.hosts:
            assert host.address in _ok(bed.ssh(host, "ip -4 -o addr show dev eth0"))
            # Its own process table, whose first process is its sshd; not the machine's.
            assert _ok(bed.ssh(host, "cat /proc/1/comm")) == "sshd"
            assert int(_ok(bed.ssh(host, "ls /proc | grep -c '^[0-9]'"))) < 20
            # Its own Ray temporary folder: what one host writes there, no other host (nor this machine) sees.
            _ok(bed.ssh(host, f"echo {host.name} > /tmp/ray/whoami"))
            # A login shell finds this environment's Ray, as Ray's launcher (`bash --login -c`) needs.
            ray = Path(sys.executable).parent / "ray"
            assert _ok(bed.ssh(host, "bash --login -c 'command -v ray'")) == str(ray)
            # and runs it: the environment's interpreter may live in this machine's home, which the host's hides.
            assert _ok(bed.ssh(host, "bash --login -c 'python -c \"import sys; print(sys.prefix)\"'")) == sys.prefix
        for host in bed.hosts:
            assert _ok(bed.ssh(host, "cat /tmp/ray/whoami")) == host.name
            # The address Ray finds for itself (by the route to a public one) is the host's, not loopback's.
            probe = 'import socket; s = socket.socket(type=socket.SOCK_DGRAM); s.connect(("8.8.8.8", 53))'
            assert _ok(bed.ssh(host, f"{sys.executable} -c '{probe}; print(s.getsockname()[0])'")) == host.address
        assert not Path("/tmp/ray/whoami").exists(), "a host wrote into this machine's /tmp/ray"
        # Hosts reach each other at their addresses, and this machine at the bridge's.
        first, second = bed.hosts[0], bed.hosts[1]
        _ok(bed.ssh(first, f"bash -c 'exec 3<>/dev/tcp/{second.address}/22 && head -c 7 <&3'"))

        testbed.lose(second)  # as a machine losing power: every process of it ends at once
        assert bed.ssh(second, "true", timeout=15).returncode != 0
        assert _ok(bed.ssh(first, "cat /proc/1/comm")) == "sshd"  # the others are untouched
    finally:
        left = testbed.down(tmp_path / "bed")
    assert left == [] and _leftovers(bed) == []


def test_up_twice_is_refused_and_down_twice_is_harmless(tmp_path: Path) -> None:
    bed = testbed.up(hosts=1, folder=tmp_path / "bed", subnet=SUBNET + 1)
    try:
        with pytest.raises(testbed.TestbedError, match="already up"):
            testbed.up(hosts=1, folder=tmp_path / "bed", subnet=SUBNET + 1)
    finally:
        assert testbed.down(tmp_path / "bed") == []
    assert testbed.down(tmp_path / "bed") == [] and _leftovers(bed) == []
