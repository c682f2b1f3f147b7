"""An on-prem test bed on one machine: hosts that are network namespaces, each with sshd on its own address.

Each host is what a cluster launcher needs from a real machine, and no more:
- its own network: a namespace with one interface on a private bridge (10.213.<n>.0/24 by default) and a
  loopback; the root namespace reaches every host through the bridge's address, and so do the hosts;
- its own process table (a PID namespace, whose first process is its sshd): `ray stop` on one host ends
  Ray processes by name and would otherwise end the other hosts' too; ending that first process ends
  every process of the host at once, which is how a test loses a node;
- its own Ray temporary folder, shared memory and home (a mount namespace with tmpfs over /tmp/ray and
  /dev/shm, and a folder of the bed bind-mounted on the home, with this machine's Python installation and
  environment bound back in where they live under the home, as pyenv's do): Ray keeps its sessions, sockets and object
  store there, and its launcher runs `bash --login`, whose ~/.bashrc here puts this Python environment's
  `ray` first on the PATH. The rest of the file system is the machine's, /tmp included: this environment,
  the project and the bed's own files may live under /tmp (a CI clone does) and every host must see them;
- sshd from Debian's openssh-server on the host's address, with keys generated for the bed.

Traffic stays on this machine: the bridge has no uplink, and the hosts' default route has no gateway (it only gives
each host a source address, as Ray's address discovery needs). `down` removes every
namespace, interface, process and key that `up` made; its state lives in one folder, so `down` works from
another process too.

    python -m cluster.testbed up [--hosts 3] [--folder DIR]   # prints the hosts and how to reach them
    python -m cluster.testbed down [--folder DIR]

Linux only, as root (namespaces, bridges and mounts need CAP_SYS_ADMIN and CAP_NET_ADMIN).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

SSHD = Path("/usr/sbin/sshd")
RAY_TEMP = Path("/tmp/ray")  # Ray's default temporary folder: private to each host
DEFAULT_FOLDER = Path("/tmp/modelfleet-testbed")
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


class TestbedError(RuntimeError):
    """The bed could not be made (or unmade); the message says which step and why."""


@dataclass
class Host:
    name: str  # also its network namespace's name
    address: str
    pid: int  # the host's first process (its sshd): ending it ends the host


@dataclass
class Testbed:
    folder: str
    tag: str  # names the bed's bridge, veths and namespaces: mf<subnet>
    gateway: str  # the bridge's address: the root namespace as the hosts see it
    prefix: int
    key: str  # the private key that logs in as root on every host
    hosts: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    def veth(self, i: int) -> str:
        """Host i's interface in the root namespace (on the bridge); its peer, inside the host, becomes eth0."""
        return f"{self.tag}h{i}"

    def ssh(self, host: Host, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `command` on `host` through its sshd, as the cluster launcher does."""
        argv = ["ssh", *SSH_OPTIONS, "-i", self.key, f"root@{host.address}", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def save(self) -> None:
        (Path(self.folder) / "testbed.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Testbed | None:
        path = folder / "testbed.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["hosts"] = [Host(**h) for h in raw["hosts"]]
        return cls(**raw)


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise TestbedError(f"`{shlex.join(argv)}` failed: {result.stderr.strip() or result.stdout.strip()}")


def _sshd_config(folder: Path, address: str) -> Path:
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {address}",
                "Port 22",
                f"HostKey {folder.parent / 'host_key'}",
                f"AuthorizedKeysFile {folder.parent / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",  # the bed's folder is under /tmp
                "PidFile none",
                "AcceptEnv LANG",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    return config


def _kept_from_home() -> list[Path]:
    """What the hosts must still see of this machine's home, which theirs hides: the Python installation and the
    environment, where they live under it (pyenv's and uv's interpreters do, and the environment's `python`
    links to its interpreter)."""
    real_home = Path.home().resolve()
    kept: list[Path] = []
    for path in sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}):
        if path.is_relative_to(real_home) and not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def _home(folder: Path) -> Path:
    """The host's home: `bash --login` there finds this environment's `ray` and Python first."""
    home = folder / "home"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    for kept in _kept_from_home():  # mount points, which the host's mounts fill with this machine's folders
        (home / kept.relative_to(Path.home().resolve())).mkdir(parents=True, exist_ok=True)
    path_line = f'export PATH="{Path(sys.executable).parent}:$PATH"\n'
    (home / ".bashrc").write_text(path_line)
    (home / ".profile").write_text(path_line)
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    return home


def _start_host(bed: Testbed, name: str, address: str) -> Host:
    folder = Path(bed.folder) / name
    folder.mkdir(parents=True, exist_ok=True)
    config, home = _sshd_config(folder, address), _home(folder)
    # In the host's network namespace: new PID and mount namespaces; private Ray temporary folder and shared
    # memory, the host's home on /root; then sshd as the namespace's first process (exec), so that ending it ends
    # every process of the host.
    real_home = Path.home().resolve()
    keep = "".join(  # this machine's Python, bound into the host's home before that hides /root's
        f"mount --bind {shlex.quote(str(k))} {shlex.quote(str(home / k.relative_to(real_home)))} && "
        for k in _kept_from_home()
    )
    inside = (
        f"mount -t tmpfs -o mode=1777 tmpfs {RAY_TEMP} && mount -t tmpfs -o mode=1777 tmpfs /dev/shm && "
        f"{keep}mount --rbind {shlex.quote(str(home))} {shlex.quote(str(real_home))} && "
        f"exec {SSHD} -D -e -f {shlex.quote(str(config))}"
    )
    log = (folder / "sshd.log").open("wb")
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            name,
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
            "--mount-proc",
            "sh",
            "-c",
            inside,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    return Host(name, address, process.pid)


def _wait_for_ssh(bed: Testbed, host: Host, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        result = bed.ssh(host, "true", timeout=10)
        if result.returncode == 0:
            return
        last = result.stderr.strip()
        time.sleep(0.3)
    log = Path(bed.folder) / host.name / "sshd.log"
    raise TestbedError(f"{host.name} ({host.address}): ssh did not answer in {timeout_s:g}s ({last}); see {log}")


def up(hosts: int = 3, folder: Path = DEFAULT_FOLDER, subnet: int = 213) -> Testbed:
    """Make `hosts` hosts; returns the bed (also saved in `folder`). Refuses if a bed is already up there."""
    if not SSHD.exists():
        raise TestbedError(f"{SSHD} is missing: install Debian's openssh-server (`make test` does)")
    if Testbed.load(folder) is not None:
        raise TestbedError(f"a test bed is already up in {folder}; `python -m cluster.testbed down` it first")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    bed = Testbed(str(folder), f"mf{subnet}", f"10.{subnet}.0.1", 24, str(folder / "client_key"))
    bed.save()  # from here on, `down` can undo what follows, even half-way
    try:
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", bed.key)
        shutil.copy(bed.key + ".pub", folder / "authorized_keys")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        RAY_TEMP.mkdir(mode=0o1777, exist_ok=True)  # the mount point of each host's own
        _run("ip", "link", "add", bed.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{bed.gateway}/{bed.prefix}", "dev", bed.bridge)
        _run("ip", "link", "set", bed.bridge, "up")
        for i in range(hosts):
            name, address, veth = f"{bed.tag}-host{i}", f"10.{subnet}.0.{10 + i}", bed.veth(i)
            _run("ip", "netns", "add", name)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            _run("ip", "link", "set", veth, "master", bed.bridge, "up")
            _run("ip", "link", "set", f"{veth}p", "netns", name)
            _run("ip", "-n", name, "link", "set", f"{veth}p", "name", "eth0")
            _run("ip", "-n", name, "addr", "add", f"{address}/{bed.prefix}", "dev", "eth0")
            _run("ip", "-n", name, "link", "set", "eth0", "up")
            _run("ip", "-n", name, "link", "set", "lo", "up")
            # A default route, as a real machine has: Ray finds a node's own address by the route to a public one
            # (without, it falls back to the hostname, which names 127.0.0.1 here). On the link itself, with no
            # gateway: a packet for elsewhere finds no neighbour and goes nowhere, so nothing leaves this machine.
            _run("ip", "-n", name, "route", "add", "default", "dev", "eth0")
            bed.hosts.append(_start_host(bed, name, address))
            bed.save()
        for host in bed.hosts:
            _wait_for_ssh(bed, host)
    except BaseException:
        down(folder)
        raise
    return bed


def lose(host: Host, wait_s: float = 0) -> None:
    """Every process of `host` ends at once, as when a machine loses power: SIGKILL to its `unshare`, whose
    child (the namespace's first process, its sshd) `--kill-child` ends with it, and the kernel every other
    process of the namespace. Waits up to `wait_s` for the `unshare` to be gone (and reaps it if ours)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        leader = psutil.Process(host.pid)
        leader.kill()
        with contextlib.suppress(psutil.TimeoutExpired):
            leader.wait(wait_s)


def _processes_in(host: Host, wait_s: float) -> list[int]:
    """The pids still in the host's network namespace after up to `wait_s` (none once the host is gone)."""
    deadline = time.monotonic() + wait_s
    while True:
        listed = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True, text=True).stdout
        pids = [int(p) for p in listed.split()]
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def down(folder: Path = DEFAULT_FOLDER) -> list[str]:
    """Undo `up`: every host's processes, namespaces and interfaces, the bridge, and the folder. Returns what
    could not be removed (nothing, normally)."""
    bed = Testbed.load(folder)
    if bed is None:
        return []
    left = []
    for host in bed.hosts:
        lose(host, wait_s=10)
    for host in bed.hosts:  # the kernel ends the rest of each host a moment after its first process
        if still := _processes_in(host, wait_s=10):
            left.append(f"{host.name}: processes {still} outlived it")
    for i, host in enumerate(bed.hosts):
        for argv in (["ip", "link", "del", bed.veth(i)], ["ip", "netns", "del", host.name]):
            result = subprocess.run(argv, capture_output=True, text=True)
            if result.returncode != 0 and "Cannot find" not in result.stderr and "No such" not in result.stderr:
                left.append(f"{shlex.join(argv)}: {result.stderr.strip()}")
    subprocess.run(["ip", "link", "del", bed.bridge], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
    return left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--hosts", type=int, default=3, help="How many hosts (up).")
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="Where the bed keeps its state.")
    args = parser.parse_args()
    try:
        if args.action == "up":
            bed = up(args.hosts, args.folder)
            for host in bed.hosts:
                print(f"{host.name}  {host.address}  ssh -i {bed.key} root@{host.address}")
        else:
            left = down(args.folder)
            if left:
                raise TestbedError("left behind: " + "; ".join(left))
            print("test bed removed")
    except TestbedError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
