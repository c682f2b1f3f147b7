"""The files of a local directory artifact, for listing, hashing and uploading alike."""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import SymlinkInArtifact


def artifact_files(folder: Path, uri: str) -> list[Path]:
    """Every regular file under `folder`, sorted.

    A symlink inside is refused rather than followed or skipped: followed, it
    could carry a file from outside the artifact (/etc/shadow,
    ~/.ray/auth_token) into the cache or up to a bucket; skipped, the artifact
    would silently lose a file its author meant to ship.
    """
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise SymlinkInArtifact(
                uri,
                f"{path} is a symlink (to {os.readlink(path)}); replace it with a copy of its target (cp -L) or remove "
                "it",
            )
        if path.is_file():
            files.append(path)
    return files
