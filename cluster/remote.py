"""Clusters that Ray's own launcher starts over SSH (onprem here; aws, gcp and azure the same way), driven from
the operator's machine.

A Ray driver must run on a node of its cluster (from elsewhere it aborts in Ray's core, looking for a raylet
socket), and the head's dashboard and Ray Client listen where they should: on the head. So every call after
`up` runs on the head, over SSH, through Ray's launcher (`ray exec`, `ray rsync-up`), which knows each
provider's way in: `up` sends this project's code to the head, and `deploy`, `status` and the rest run there
as they would on a `modelfleet run` machine. Nothing else needs opening: SSH is the one way in.

The rendered config and the cluster's record (`remote.json`) live in the cluster's state folder, so any later
command finds the cluster by its name or its Ray address.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from groundwork.local_rays import modelfleet_home
from groundwork.packages import PROJECT_PACKAGES, stage_packages
from groundwork.ray_env import secure_ray_token
from providers.compute import pool_resource

from ._drivers import ANSWER, SSH_FROM_HEAD
from .launch import LaunchError, state_dir
from .render import SERVE_PORT, render
from .runtime import Versions, mismatches, this_machine
from .spec import ClusterSpec, Provider

__all__ = [
    "REMOTE_HOME",
    "RemoteCluster",
    "alive_nodes",
    "check_versions",
    "down",
    "find",
    "on_head",
    "send",
    "status",
    "up",
]

REMOTE_HOME = "~/.modelfleet"  # on the head (and on every node, for what a deploy sends to all of them)
CODE = f"{REMOTE_HOME}/code"  # this project's packages, as of the last `up` or deploy
GCS_PORT = 6379  # the rendered head_start_ray_commands' --port
UP_TIMEOUT_S = 900
WORKERS_TIMEOUT_S = 300

# Around a command's own output, Ray's launcher prints its own lines (and, on failure, the whole ssh command):
# the command's output is what comes between these two.
BEGIN, END = "--- modelfleet: output begins ---", "--- modelfleet: output ends ---"
STDOUT = "modelfleet-stdout:"  # marks the line that brings the command's stdout back (see on_head)


@dataclass
class RemoteCluster:
    name: str
    provider: str
    config: str  # the rendered cluster YAML that Ray's launcher reads
    head: str  # the head's address
    address: str  # its Ray (GCS) address, for `deploy/status --address` from this machine
    serve_url: str  # Serve's proxies, once a deploy with --host 0.0.0.0 started them
    log: str  # `ray up`'s output
    # On-prem, the listed workers: the fixed machines that what a deploy sends (its file artifacts) must reach.
    # Empty on clouds, where workers come and go: artifacts there live at s3://, gs:// or az:// URIs.
    workers: list[str] = field(default_factory=list)
    ssh_user: str = "root"  # how the head's autoscaler logs in to the workers (auth.ssh_user)
    versions: str = ""  # what every host runs, as `up` found it: "Ray 2.60.0 on Python 3.11.7"

    def save(self) -> None:
        (state_dir(self.name) / "remote.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def load(name: str) -> RemoteCluster | None:
    path = state_dir(name) / "remote.json"
    return RemoteCluster(**json.loads(path.read_text())) if path.exists() else None


def find(address: str) -> RemoteCluster | None:
    """The cluster this machine launched whose Ray address (or name) is `address`, if any."""
    for path in sorted((modelfleet_home() / "clusters").glob("*/remote.json")):
        cluster = RemoteCluster(**json.loads(path.read_text()))
        if address in (cluster.address, cluster.name):
            return cluster
    return None


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def _launcher(
    *argv: str, timeout: float, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Ray's launcher (`ray up|down|exec|rsync-up|get-head-ip ...`), its output captured (and kept in `log`)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    try:
        result = subprocess.run(
            [_ray_cli(), *argv], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`ray {argv[0]}` did not finish within {timeout:g}s") from None
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    return result


def _tail(result: subprocess.CompletedProcess[str], lines: int = 8) -> str:
    kept = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _ensure_token(path: Path) -> None:
    """The cluster's Ray auth token, made here (256 random bits, as Ray makes its own) if there is none yet:
    the launcher copies it to every node, and every Ray process there requires it."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as token:
        token.write(secrets.token_hex(32))


def _up_env(spec: ClusterSpec) -> dict[str, str]:
    """On-prem: Ray's first autoscaler. Ray 2.60's `ray up` starts the head with autoscaler v2, which on Ray's
    on-prem provider (head and workers of one node type) takes the head for one of the listed workers, so one
    worker never starts, and then drops the head as "no longer found"; v1 starts every listed worker."""
    return {"RAY_UP_enable_autoscaler_v2": "0"} if spec.provider.type is Provider.onprem else {}


def up(spec: ClusterSpec, source: str) -> RemoteCluster:
    """Render, `ray up` (head and workers over SSH), then send this project's code to the head."""
    home = state_dir(spec.name)
    home.mkdir(parents=True, exist_ok=True)
    config, log = home / "cluster.yaml", home / "ray-up.log"
    config.write_text(render(spec, source=source))
    _ensure_token(Path(spec.auth_token_file).expanduser())
    secure_ray_token(Path(spec.auth_token_file))  # the launcher copies it to every node with the mode it has here
    result = _launcher("up", "-y", "--no-config-cache", str(config), timeout=UP_TIMEOUT_S, log=log, env=_up_env(spec))
    if result.returncode != 0:
        raise LaunchError(f"`ray up` exited {result.returncode}:\n{_tail(result)}\n(full log: {log})")
    found = _launcher("get-head-ip", str(config), timeout=60)
    head = found.stdout.strip().splitlines()[-1] if found.returncode == 0 and found.stdout.strip() else ""
    if not head:
        raise LaunchError(f"the cluster is up but Ray's launcher names no head: {_tail(found)}")
    cluster = RemoteCluster(
        spec.name,
        spec.provider.type.value,
        str(config),
        head,
        f"{head}:{GCS_PORT}",
        f"http://{head}:{SERVE_PORT}",
        str(log),
        [host for pool in spec.pools for host in pool.hosts],
        spec.ssh.user,
    )
    cluster.save()
    send_code(cluster)
    cluster.versions = str(check_versions(cluster))
    cluster.save()
    _wait_for_workers(cluster, spec)
    return cluster


def check_versions(cluster: RemoteCluster) -> Versions:
    """The head's Ray and Python, once every on-prem worker (read over SSH from the head) and this machine are
    found to match it; else a LaunchError naming each that differs, at once rather than after the workers' wait.
    (A cloud's workers come and go, from the head's own config and setup: Ray refuses any that would differ.)"""
    output = on_head(
        cluster,
        shlex.join(["python", "-m", "cluster._drivers", "versions", cluster.ssh_user, *cluster.workers]),
        quiet=True,
    )
    answer = [line.removeprefix(ANSWER) for line in output.splitlines() if line.startswith(ANSWER)]
    if not answer:
        raise LaunchError(f"cannot read the hosts' Ray and Python versions on the head: {output.strip()[-300:]}")
    found = json.loads(answer[-1])
    head = Versions(**found.pop("head"))
    nodes = {host: Versions(**said) if isinstance(said, dict) else said for host, said in found.items()}
    problems = mismatches(head, nodes, this_machine())
    if problems:
        raise LaunchError(
            f"Ray refuses nodes and drivers of other versions: {'; '.join(problems)}. Install the same on every "
            "host (install_runtime: true installs this machine's) and run `cluster up` again; the head is up "
            "(`modelfleet cluster down` stops it)"
        )
    return head


def _wait_for_workers(cluster: RemoteCluster, spec: ClusterSpec, timeout_s: float = WORKERS_TIMEOUT_S) -> None:
    """Until every pool has the nodes it starts with (on-prem: every listed machine), which the head's autoscaler
    starts after `ray up` returns: a deploy right after `up` then finds them."""
    deadline = time.monotonic() + timeout_s
    while True:
        pools = status(cluster, spec)["pools"]
        short = {name: pool for name, pool in pools.items() if pool["nodes"] < pool["min_workers"]}
        if not short:
            return
        if time.monotonic() > deadline:
            missing = ", ".join(f"pool {n} has {p['nodes']} of {p['min_workers']}" for n, p in short.items())
            raise LaunchError(
                f"the head is up but its workers did not all join within {timeout_s:g}s ({missing}); the head's "
                f"autoscaler says why: `ray exec {cluster.config} 'tail -50 /tmp/ray/session_latest/logs/monitor.log'`"
            )
        time.sleep(3)


def down(name: str) -> RemoteCluster | None:
    """`ray down` (Ray stops on every node); None if this machine launched no cluster of that name."""
    cluster = load(name)
    if cluster is None:
        return None
    if cluster.workers:  # on-prem: only the head's launcher knows the workers, so `ray down` from here stops none
        stops = [
            f"{_worker_ssh(cluster, worker)} 'bash --login -c \"ray stop --force\"' >/dev/null 2>&1"
            for worker in cluster.workers
        ]
        on_head(cluster, "; ".join(stops) + "; true", quiet=True)  # a lost worker has nothing left to stop
    result = _launcher("down", "-y", cluster.config, timeout=300, log=Path(cluster.log).with_name("ray-down.log"))
    if result.returncode != 0:
        raise LaunchError(f"`ray down` exited {result.returncode}:\n{_tail(result)}")
    (state_dir(name) / "remote.json").unlink()
    return cluster


def send(cluster: RemoteCluster, local: Path, remote: str, all_nodes: bool = False) -> None:
    """Copy the folder `local` to `remote` on the head by rsync (Ray's launcher) and, on-prem with `all_nodes`,
    from the head on to every worker, over SSH with the key the head's autoscaler reaches them with: the workers
    may be reachable only from inside the cluster's network, as they are for Ray's own file mounts."""
    result = _launcher("rsync-up", cluster.config, f"{local}/", remote, timeout=600)
    if result.returncode != 0:
        raise LaunchError(f"copying {local} to the head failed:\n{_tail(result)}")
    if all_nodes and cluster.workers:
        on_head(
            cluster,
            " && ".join(
                f"{_worker_ssh(cluster, worker)} mkdir -p {remote} && "
                f"rsync -a --delete -e {shlex.quote(SSH_FROM_HEAD)} {remote}/ {cluster.ssh_user}@{worker}:{remote}/"
                for worker in cluster.workers
            ),
            quiet=True,
        )


def _worker_ssh(cluster: RemoteCluster, worker: str) -> str:
    """The head's ssh to an on-prem worker, as its autoscaler logs in there."""
    return f"{SSH_FROM_HEAD} {cluster.ssh_user}@{worker}"


def send_code(cluster: RemoteCluster) -> None:
    """This project's packages (source only) to CODE on the head, where the commands run there import them."""
    with tempfile.TemporaryDirectory(prefix="modelfleet-code-") as staging:
        stage_packages(PROJECT_PACKAGES, Path(staging))
        on_head(cluster, f"mkdir -p {CODE}", quiet=True)
        send(cluster, Path(staging), CODE)


def _between_markers(stream) -> Iterator[str]:
    inside = False
    for raw in stream:
        line = raw.replace("\r\n", "\n")  # the launcher's terminal ends lines as terminals do
        if BEGIN in line or END in line:  # (a terminal's reset code may come first)
            inside = BEGIN in line
        elif inside:
            yield line


def on_head(cluster: RemoteCluster, command: str, quiet: bool = False, cwd: str | None = None, code: str = CODE) -> str:
    """Run `command` (a shell command line) on the head in a login shell, with the packages in `code` first on
    PYTHONPATH, and return its stdout. Unless `quiet`, its stdout also reaches this process's stdout and its
    stderr this process's stderr, as they come. LaunchError if it fails."""
    prefix = f"cd {cwd} && " if cwd else ""
    # Every Ray process of the cluster requires its token (RAY_AUTH_MODE=token in the rendered start commands);
    # a driver sends it only when told to. The output comes through the launcher's terminal (`ssh -tt`): sized
    # as ours, and plain text unless ours is a terminal (rich reads COLUMNS and TTY_COMPATIBLE).
    interactive = sys.stderr.isatty()
    console = f"COLUMNS={shutil.get_terminal_size().columns}" if interactive else "COLUMNS=200 TTY_COMPATIBLE=0"
    environment = f"RAY_AUTH_MODE=token {console} PYTHONPATH={code}${{PYTHONPATH:+:$PYTHONPATH}}"
    # The launcher's terminal joins the command's stdout and stderr into one stream, where a driver's notices
    # land in the middle of an answer (`status --json`), even inside its lines: stdout goes to a file on the
    # head and comes back once the command has ended, as one base64 line (stderr still streams as it comes).
    remote = (
        f"echo '{BEGIN}'; answer=$(mktemp); {prefix}( export {environment}; {command} ) > $answer; code=$?; "
        f"echo; echo \"{STDOUT}$(base64 -w0 < $answer)\"; rm -f $answer; echo '{END}'; exit $code"
    )
    # ssh's own notices ("Permanently added ...") come on the launcher's stderr, kept apart for a failure's message.
    with tempfile.TemporaryFile("w+") as notices:
        process = subprocess.Popen(
            [_ray_cli(), "exec", cluster.config, remote],
            stdout=subprocess.PIPE,
            stderr=notices,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
        answer, everything = "", []
        assert process.stdout is not None
        for line in _between_markers(process.stdout):
            if STDOUT in line:
                encoded = re.match(r"[A-Za-z0-9+/=]*", line.split(STDOUT, 1)[1])
                answer = base64.b64decode(encoded.group() if encoded else "").decode(errors="replace")
                everything.append(answer)
                if not quiet:
                    print(answer, end="", flush=True)
                continue
            everything.append(line)
            if not quiet and line.strip():
                print(line, end="", flush=True, file=sys.stderr)
        exit_code = process.wait()
        notices.seek(0)
        launcher = [line for line in notices.read().splitlines() if line.strip()][-3:]
    if exit_code != 0:
        tail = "".join(everything[-8:]).rstrip() or "\n".join(launcher)
        raise LaunchError(
            f"on the head ({cluster.head}), `{shlex.join(shlex.split(command)[:4])} ...` exited {exit_code}"
            + (f":\n{tail}" if tail and quiet else "")
        )
    return answer


def alive_nodes(cluster: RemoteCluster) -> list[dict]:
    """Every alive node of the cluster, read on the head: {"address", "resources"}."""
    output = on_head(cluster, f"python -m cluster._drivers nodes {cluster.address}", quiet=True)
    answer = [line.removeprefix(ANSWER) for line in output.splitlines() if line.startswith(ANSWER)]
    if not answer:
        raise LaunchError(f"cannot read the cluster's nodes on the head: {output.strip().splitlines()[-1:]}")
    return json.loads(answer[-1])


def status(cluster: RemoteCluster, spec: ClusterSpec) -> dict:
    """DESIGN.md's `cluster status --json`, read on the head: address, serve_url, and per pool its nodes."""
    nodes = alive_nodes(cluster)
    pools = {}
    for pool in spec.pools:
        members = [n for n in nodes if n["resources"].get(pool_resource(pool.name), 0) > 0]
        pools[pool.name] = {
            "nodes": len(members),
            "hosts": sorted(n["address"] for n in members),
            "cpus": sum(n["resources"].get("CPU", 0) for n in members),
            "gpus": sum(int(n["resources"].get("GPU", 0)) for n in members),
            # On-prem, every listed machine joins (Ray's on-prem provider keeps min = max = the listed workers).
            "min_workers": len(pool.hosts) if pool.hosts else pool.min_workers,
            "max_workers": len(pool.hosts) if pool.hosts else pool.max_workers,
        }
    return {
        "name": cluster.name,
        "provider": cluster.provider,
        "address": cluster.address,
        "serve_url": cluster.serve_url,
        "head": cluster.head,
        "versions": cluster.versions,
        "reach": f"over SSH through Ray's launcher (`ray exec {cluster.config} ...`)",
        "pools": pools,
    }
