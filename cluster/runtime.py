"""What a node needs to run modelfleet's replicas, pinned to this machine's versions, and the checks that they match.

A host that `cluster up` reaches needs SSH and Python 3, nothing else: the rendered `setup_commands` (on
every provider Ray's launcher starts, unless the spec has an `image:` or `install_runtime: false`) make a
virtualenv at RUNTIME_VENV, install Ray and what the replicas import at the versions installed here, and put
that virtualenv first on the login shell's PATH, where Ray's launcher looks for `ray`. Ray itself refuses a
node or a driver of another Ray version or Python patch level, with an error deep in a node's log; `up`
reads every host's versions first and names the one that differs.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

__all__ = [
    "RUNTIME_VENV",
    "VERSIONS_PROBE",
    "Versions",
    "install_commands",
    "mismatches",
    "node_requirements",
    "this_machine",
]

RUNTIME_VENV = "~/.modelfleet/venv"
# modelfleet's own dependencies, plus what the storage providers and the examples' models import on a replica.
EXTRAS = ("cloud", "examples")
# A node runs Ray's dashboard agent and the autoscaler's side of the launcher: Ray's `default` extra.
RAY_EXTRAS = "default,serve"


def _pinned(requirement: Requirement) -> str:
    """`name[extras]==the version installed here` (a local build label such as torch's +cpu dropped), or the
    requirement as written if this machine lacks it."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    try:
        installed = version(requirement.name).split("+")[0]
    except PackageNotFoundError:
        return str(requirement)
    return f"{requirement.name}{extras}=={installed}"


def _requirements(extras: set[str]) -> list[Requirement]:
    """modelfleet's requirements with `extras`, its own extras (cloud -> s3, gcs, azure) expanded."""
    found: list[Requirement] = []
    wanted, seen = set(extras), set[str]()
    while wanted - seen:
        extra = min(wanted - seen)  # in order: the rendered file is the same on every run
        seen.add(extra)
        for line in requires("modelfleet") or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
                continue
            if requirement.name == "modelfleet":
                wanted |= requirement.extras
            elif all(r.name != requirement.name for r in found):
                found.append(requirement)
    return found


def node_requirements() -> list[str]:
    """What a node installs: Ray with its node-side extras, then modelfleet's runtime dependencies, each at this
    machine's version (the code that ships with a deploy was written against them)."""
    pins = [f"ray[{RAY_EXTRAS}]=={version('ray')}"]
    pins += [_pinned(r) for r in _requirements({"", *EXTRAS}) if r.name != "ray"]
    return pins


def install_commands() -> list[str]:
    """Shell commands for the launcher's `setup_commands`, run on every node before Ray starts (again on every
    `up`: each one does nothing when its work is done)."""
    path_line = f'export PATH="{RUNTIME_VENV.replace("~", "$HOME")}/bin:$PATH"  # modelfleet: Ray and its replicas'
    packages = " ".join(shlex.quote(p) for p in node_requirements())
    return [
        f"test -x {RUNTIME_VENV}/bin/python || python3 -m venv {RUNTIME_VENV}",
        f"{RUNTIME_VENV}/bin/python -m pip install --quiet --disable-pip-version-check {packages}",
        # Ray's launcher runs every later command in `bash --login -i`, which reads ~/.bashrc.
        f"grep -qxF {shlex.quote(path_line)} ~/.bashrc || echo {shlex.quote(path_line)} >> ~/.bashrc",
    ]


@dataclass(frozen=True)
class Versions:
    ray: str
    python: str

    def __str__(self) -> str:
        return f"Ray {self.ray} on Python {self.python}"


def this_machine() -> Versions:
    return Versions(version("ray"), ".".join(map(str, sys.version_info[:3])))


# Run in a host's login shell: the Ray that Ray's launcher would start there, and the Python that runs it.
VERSIONS_PROBE = (
    'ray_python=$(head -1 "$(command -v ray)" | sed "s/^#!//") && '
    '"$ray_python" -c \'import sys, ray; print("versions", ray.__version__, "%d.%d.%d" % sys.version_info[:3])\''
)


def mismatches(head: Versions, nodes: dict[str, Versions | str], operator: Versions) -> list[str]:
    """One sentence per host whose versions Ray would refuse beside the head's (Ray exact, Python to the patch
    level, as Ray checks them), or that could not say; and this machine's, if its Ray or Python minor differ
    (the code a deploy ships from here was written for them)."""
    problems = []
    for host, found in nodes.items():
        if isinstance(found, str):
            problems.append(f"{host}: cannot read its Ray and Python ({found})")
        elif found != head:
            problems.append(f"{host} runs {found}, the head {head}")
    if operator.ray != head.ray or operator.python.split(".")[:2] != head.python.split(".")[:2]:
        problems.append(f"this machine runs {operator}, the head {head}")
    return problems
