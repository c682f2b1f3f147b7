"""The Rays modelfleet runs on this machine, and how to reach them, so no command needs to be told twice.

`modelfleet run` and a local-sim `cluster up` each leave a small JSON record
under `$MODELFLEET_HOME/rays/` while they run; `status`, `deploy` and
`serve_apps.connect()` read them when no address is given. A record whose
process is gone (or whose pid now belongs to another process) is stale and
is removed by whoever finds it, so a crash never leaves a wrong answer behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

__all__ = ["LocalRay", "NoRayFound", "default_ray_address", "forget", "live_rays", "modelfleet_home", "record"]


def modelfleet_home() -> Path:
    """Where modelfleet keeps its state on this machine (MODELFLEET_HOME, default ~/.modelfleet)."""
    return Path(os.environ.get("MODELFLEET_HOME", Path.home() / ".modelfleet"))


def _folder() -> Path:
    return modelfleet_home() / "rays"


class NoRayFound(Exception):
    """No address was given and none could be found; the message says what to pass."""


@dataclass(frozen=True)
class LocalRay:
    kind: str  # "run" or "local-sim"
    name: str  # the app `run` serves, or the cluster's name
    ray_address: str  # GCS host:port
    url: str  # where its models answer over HTTP
    pid: int  # the process whose life is the Ray's: `modelfleet run`, or the local-sim head
    # That process's command line, so a reused pid is not mistaken for it. (Not its start time: psutil derives it
    # from the boot time, which moves when a VM's clock is stepped, and a live record would look stale.)
    command: list[str]

    def describe(self) -> str:
        return f"{self.kind} {self.name!r} at {self.ray_address} (pid {self.pid})"


def _command(pid: int) -> list[str] | None:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return None


def record(kind: str, name: str, ray_address: str, url: str, pid: int | None = None) -> LocalRay:
    """Say that a Ray runs here (until `forget` or its process ends); written whole or not at all."""
    pid = pid or os.getpid()
    ray = LocalRay(kind, name, ray_address, url, pid, _command(pid) or [])
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{pid}.partial"
    partial.write_text(json.dumps(asdict(ray)) + "\n")
    os.replace(partial, folder / f"{pid}.json")
    return ray


def forget(pid: int | None = None) -> None:
    (_folder() / f"{pid or os.getpid()}.json").unlink(missing_ok=True)


def live_rays() -> list[LocalRay]:
    """Every recorded Ray whose process still runs, oldest first; stale records are removed on the way."""
    found = []
    for path in sorted(_folder().glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            ray = LocalRay(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)  # torn or foreign: nothing can use it
            continue
        if _command(ray.pid) != ray.command:
            path.unlink(missing_ok=True)  # its process ended (or its pid now names another process)
            continue
        found.append(ray)
    return found


def default_ray_address() -> str:
    """RAY_ADDRESS if set, else the one Ray modelfleet runs on this machine; else NoRayFound saying what to pass."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    rays = live_rays()
    if len(rays) == 1:
        return rays[0].ray_address
    if not rays:
        raise NoRayFound(
            "no `modelfleet run` or local-sim cluster is running on this machine; start one, or pass --address "
            "HOST:PORT (the `ray:` address `run` prints, or the one `cluster up` prints)"
        )
    raise NoRayFound(
        f"{len(rays)} Rays run on this machine ({'; '.join(r.describe() for r in rays)}); pass --address with one of "
        "their addresses"
    )
