"""Python packages as they travel to other machines: their source files only, copied into a folder.

A deployment to a cluster takes its code with it (Ray's runtime_env `py_modules` for the replicas; a copy on
the head for the command run there), so every node runs exactly the code of the machine that deployed, whatever
is installed there. Only what Python imports travels: no artifacts, caches or data that a package folder
may also hold (examples/embeddings keeps 90 MB of weights next to its code).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

__all__ = ["PROJECT_PACKAGES", "REPLICA_PACKAGES", "PackageError", "stage_packages"]

# What a replica imports of this project (serve_apps, and what it stands on), and what the CLI needs besides.
REPLICA_PACKAGES = ("serve_apps", "providers", "groundwork")
PROJECT_PACKAGES = (*REPLICA_PACKAGES, "modelfleet", "cluster", "loadtests")

# Source and the data files packages read at run time (templates, bundled YAML); nothing else travels.
SOURCE_SUFFIXES = {".py", ".yaml", ".j2", ".typed"}


class PackageError(Exception):
    """A package cannot travel (not importable here, or a lone module); the message says which and why."""


def _package_folder(name: str) -> Path:
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise PackageError(f"package {name!r} cannot be found here: {exc}") from None
    if found is None:
        raise PackageError(f"package {name!r} cannot be found here (not importable from this folder or PYTHONPATH)")
    if not found.submodule_search_locations:
        raise PackageError(
            f"module {name!r} is a single file, not a package: put it in a folder with an __init__.py to ship it"
        )
    return Path(next(iter(found.submodule_search_locations)))


def stage_packages(names: list[str] | tuple[str, ...], into: Path) -> list[Path]:
    """Copy each top-level package's source files to `into/<name>`; returns those folders, in order, once each."""
    staged = []
    for name in dict.fromkeys(names):
        source, target = _package_folder(name), into / name
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in relative.parts:
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / relative)
        staged.append(target)
    return staged
