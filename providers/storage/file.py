"""file:// and plain paths."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from ._base import CHUNK_BYTES, ObjectInfo
from ._errors import AccessDenied, ArtifactNotFound, StorageUnavailable
from ._local import artifact_files
from ._uri import ParsedURI


def _info(path: Path) -> ObjectInfo:
    st = path.stat()
    return ObjectInfo(st.st_size, f"{st.st_size}-{st.st_mtime_ns}")


class Provider:
    def _path(self, uri: ParsedURI) -> Path:
        return Path(uri.key)

    def _guard(self, uri: ParsedURI, exc: OSError):
        if isinstance(exc, FileNotFoundError):
            return ArtifactNotFound(
                str(uri), "no such file; check the path (plain paths are relative to the spec's folder)"
            )
        if isinstance(exc, PermissionError):
            return AccessDenied(str(uri), "permission denied; check the file's permissions")
        return StorageUnavailable(str(uri), f"cannot read it ({exc})")

    def is_dir(self, uri: ParsedURI) -> bool:
        return self._path(uri).is_dir()

    def stat(self, uri: ParsedURI) -> ObjectInfo:
        try:
            return _info(self._path(uri))
        except OSError as exc:
            raise self._guard(uri, exc) from None

    def list(self, uri: ParsedURI) -> list[tuple[str, ObjectInfo]]:
        root = self._path(uri)
        if not root.is_dir():
            raise ArtifactNotFound(str(uri), "no such folder; check the path")
        files = artifact_files(root, str(uri))
        if not files:
            raise ArtifactNotFound(str(uri), "the folder is empty")
        return [(p.relative_to(root).as_posix(), _info(p)) for p in files]

    def download(self, uri: ParsedURI, sink: BinaryIO) -> None:
        try:
            with self._path(uri).open("rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    sink.write(chunk)
        except OSError as exc:
            raise self._guard(uri, exc) from None

    def upload(self, local: Path, uri: ParsedURI) -> None:
        target = self._path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
