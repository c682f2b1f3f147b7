"""fetch() and upload(): a verified, content-addressed local cache in front of every provider.

Cache layout under the root (`MODELFLEET_CACHE_DIR`, default ~/.cache/modelfleet):

    sha256/<hex>/<name>    artifacts with a declared sha256: a hit needs no network at all
    uri/<hex>/<name>       artifacts without one, keyed by (URI, the object's version token)

(<name> is the artifact's own file or folder name.)
    tmp/                   downloads in progress; renamed into place only once complete and verified
    locks/<hex>.lock       one file lock per entry, so concurrent fetches download once

An entry appears by one atomic rename of a finished temp folder, so a
checksum mismatch, a dropped connection or a crash mid-download leaves no
entry behind, and whatever is in the cache is whole.

A directory artifact's sha256 is the sha256 of its manifest: one line
`f"{relative_path}\\0{file_sha256}\\n"` per file, sorted by path
(see `directory_sha256`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from filelock import FileLock
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ._base import CHUNK_BYTES, ObjectInfo, child
from ._errors import ArtifactNotFound, ChecksumMismatch, StorageError, StorageUnavailable
from ._registry import get_provider
from ._uri import ParsedURI, parse_uri, resolve_uri

__all__ = ["cache_root", "directory_sha256", "fetch", "upload"]

Progress = Callable[[int, int | None], None]
_Item = tuple[str, ParsedURI, ObjectInfo]  # (relative path in the entry, source URI, its info)
ATTEMPTS = int(os.environ.get("MODELFLEET_FETCH_ATTEMPTS", "3"))


def cache_root(cache_dir: Path | str | None = None) -> Path:
    root = Path(cache_dir or os.environ.get("MODELFLEET_CACHE_DIR") or Path.home() / ".cache" / "modelfleet")
    return root.expanduser()


def _manifest_digest(file_hashes: dict[str, str]) -> str:
    lines = "".join(f"{rel}\0{digest}\n" for rel, digest in sorted(file_hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def directory_sha256(path: Path | str) -> str:
    """The sha256 to declare for a directory artifact (hash of its sorted file manifest)."""
    root = Path(path)
    hashes = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with file.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
        hashes[file.relative_to(root).as_posix()] = digest.hexdigest()
    return _manifest_digest(hashes)


class _Sink:
    """A write-only file that hashes, counts and reports progress as bytes stream through."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None]):
        self.file = path.open("wb")
        self.digest = hashlib.sha256()
        self.size = 0
        self.on_bytes = on_bytes

    def write(self, chunk: bytes) -> int:
        self.file.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)
        self.on_bytes(len(chunk))
        return len(chunk)

    def close(self) -> None:
        self.file.close()


def _safe_relative(uri: ParsedURI, rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise StorageError(str(uri), f"refusing object path {rel!r}: it would land outside the artifact folder")
    return path


@retry(
    retry=retry_if_exception_type(StorageUnavailable),
    stop=stop_after_attempt(ATTEMPTS),
    wait=wait_exponential(multiplier=0.2, max=2),
    reraise=True,
)
def _download_into(folder: Path, uri: ParsedURI, files: list[_Item], progress: Progress | None) -> dict[str, str]:
    """Download `files` under `folder`; return relative path -> sha256."""
    provider = get_provider(uri.scheme)
    total = sum(i.size for _, _, i in files) if all(i.size is not None for _, _, i in files) else None
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    shutil.rmtree(folder, ignore_errors=True)  # a retry starts from nothing
    hashes = {}
    for rel, source, info in files:
        target = folder / _safe_relative(uri, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        sink = _Sink(target, on_bytes)
        try:
            provider.download(source, sink)
        finally:
            sink.close()
        if info.size is not None and sink.size != info.size:
            raise StorageUnavailable(str(uri), f"download of {rel} ended after {sink.size} of {info.size} bytes; retry")
        hashes[rel] = sink.digest.hexdigest()
    return hashes


def fetch(
    uri: str,
    *,
    sha256: str | None = None,
    base_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    progress: Progress | None = None,
) -> Path:
    """A local, verified copy of the artifact at `uri` (a file, or a folder for directory artifacts)."""
    uri = resolve_uri(uri, base_dir)
    parsed = parse_uri(uri)
    root = cache_root(cache_dir)
    if sha256:  # content-addressed: a hit needs no network at all
        entry = root / "sha256" / sha256
        if entry.exists():
            return _only_child(entry)
    provider = get_provider(parsed.scheme)
    name = PurePosixPath(parsed.key.split("?", 1)[0].rstrip("/")).name or "artifact"
    is_dir = parsed.is_dir or provider.is_dir(parsed)
    if is_dir:
        files = [(f"{name}/{rel}", child(parsed, rel), info) for rel, info in provider.list(parsed)]
        version = _manifest_digest({rel: info.version for rel, _, info in files})
    else:
        info = provider.stat(parsed)
        files = [(name, parsed, info)]
        version = info.version
    key = sha256 or hashlib.sha256(f"{uri}\0{version}".encode()).hexdigest()
    entry = root / ("sha256" if sha256 else "uri") / key
    if entry.exists():
        return _only_child(entry)
    for sub in ("tmp", "locks", entry.parent.name):
        (root / sub).mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "locks" / f"{key}.lock")):
        if entry.exists():  # another process finished it while we waited
            return _only_child(entry)
        staging = Path(tempfile.mkdtemp(dir=root / "tmp", prefix=f"{key[:12]}-"))
        try:
            folder = staging / "entry"
            hashes = _download_into(folder, parsed, files, progress)
            if is_dir:
                actual = _manifest_digest({rel.split("/", 1)[1]: digest for rel, digest in hashes.items()})
            else:
                actual = hashes[name]
            if sha256 and actual != sha256:
                raise ChecksumMismatch(
                    uri, f"expected sha256 {sha256} but the downloaded bytes hash to {actual}; "
                    "re-publish the artifact or fix artifact.sha256"
                )
            os.rename(folder, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _only_child(entry)


def _only_child(entry: Path) -> Path:
    """An entry holds exactly one thing: the artifact file or folder, under its own name."""
    return next(entry.iterdir())


def upload(local_path: Path | str, uri: str, *, base_dir: Path | str | None = None) -> None:
    """Publish a local file, or a folder (to a URI ending in '/'), to `uri`."""
    local = Path(local_path)
    parsed = parse_uri(resolve_uri(uri, base_dir))
    provider = get_provider(parsed.scheme)
    if not local.exists():
        raise ArtifactNotFound(str(local), "nothing to upload there")
    if local.is_dir():
        target = parsed if parsed.is_dir else ParsedURI(parsed.scheme, parsed.bucket, parsed.key + "/")
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            provider.upload(file, child(target, file.relative_to(local).as_posix()))
    else:
        provider.upload(local, parsed)
