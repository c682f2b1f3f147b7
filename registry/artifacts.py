"""Artifacts on registration: published once, at a content-addressed place under `MODELFLEET_ARTIFACT_ROOT`
(any storage scheme: file, s3, gs, az), so registering the same bytes twice is the same artifact."""

from __future__ import annotations

import os
from pathlib import Path

from groundwork.local_rays import modelfleet_home
from providers.storage import artifact_sha256, fetch, upload

__all__ = ["artifact_root", "publish"]


def artifact_root() -> str:
    """`MODELFLEET_ARTIFACT_ROOT`, or `$MODELFLEET_HOME/artifacts` on this machine."""
    return os.environ.get("MODELFLEET_ARTIFACT_ROOT") or (modelfleet_home() / "artifacts").as_uri()


def publish(source: str, root: str | None = None) -> tuple[str, str]:
    """(URI, sha256) of `source` (a local file or folder, or an artifact at any storage URI, fetched first) once
    published at `<root>/sha256/<sha256>/<its name>` (a folder's URI ends in '/', as a spec's does)."""
    local = Path(source)
    if not local.exists():
        local = fetch(source)  # a URI: verified by nothing yet, so hashed here, from the bytes we will publish
    sha256 = artifact_sha256(local)
    target = f"{(root or artifact_root()).rstrip('/')}/sha256/{sha256}/{local.name}" + ("/" if local.is_dir() else "")
    upload(local, target)
    return target, sha256
