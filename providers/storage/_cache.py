"""fetch() and upload(): a verified, content-addressed local cache in front of every provider.

Cache layout under the root (`MODELFLEET_CACHE_DIR`, default ~/.cache/modelfleet):

    sha256/<hex>/<name>    artifacts with a declared sha256: a hit needs no network at all
    uri/<hex>/<name>       artifacts without one, keyed by (URI, the object's version token)

(<name> is the artifact's own file or folder name.)
    tmp/                   downloads in progress; renamed into place only once complete and verified
    locks/<hex>.lock       one file lock per entry, so concurrent fetches download once

An entry appears by one atomic rename of a finished temp folder, so a
checksum mismatch, a dropped connection, an oversized download or a crash
mid-download leaves no entry behind, and whatever is in the cache is whole.
A sha256 entry is re-hashed on every hit (a disk fault or a stray edit must
not be served as the model), and the root must be private to its owner,
since anyone who can write there can plant entries.

Downloads stop at each object's declared size and at `MODELFLEET_MAX_ARTIFACT_MB`
for the whole artifact (default 51200), whatever the provider sends.

A directory artifact's sha256 is the sha256 of its manifest: one line
`f"{relative_path}\\0{file_sha256}\\n"` per file, sorted by path
(see `directory_sha256`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from filelock import FileLock
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ._base import CHUNK_BYTES, ObjectInfo, child
from ._errors import (
    ArtifactNotFound,
    ArtifactTooLarge,
    ChecksumMismatch,
    StorageError,
    StorageUnavailable,
    SymlinkInArtifact,
    UnsafeCacheDir,
)
from ._local import artifact_files
from ._registry import get_provider
from ._uri import ParsedURI, parse_uri, resolve_uri

__all__ = ["cache_root", "directory_sha256", "fetch", "upload"]

Progress = Callable[[int, int | None], None]
_Item = tuple[str, ParsedURI, ObjectInfo]  # (relative path in the entry, source URI, its info)
ATTEMPTS = int(os.environ.get("MODELFLEET_FETCH_ATTEMPTS", "3"))
MIB = 1024 * 1024
log = logging.getLogger(__name__)


def cache_root(cache_dir: Path | str | None = None) -> Path:
    root = Path(cache_dir or os.environ.get("MODELFLEET_CACHE_DIR") or Path.home() / ".cache" / "modelfleet")
    return root.expanduser()


def _private_root(root: Path) -> Path:
    """The cache root, created 0700 if absent; refused if anyone but us could plant entries in it."""
    try:
        root.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(
            str(root), f"cannot create the cache folder ({exc}); set MODELFLEET_CACHE_DIR to a folder of yours"
        ) from None
    st = root.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCacheDir(str(root), "the cache path is not a folder; set MODELFLEET_CACHE_DIR to a folder")
    if st.st_uid != os.getuid():
        raise UnsafeCacheDir(
            str(root),
            f"the cache folder belongs to uid {st.st_uid}, not to you (uid {os.getuid()}), so its entries "
            f"can't be trusted; chown -R {os.getuid()} {root}, or set MODELFLEET_CACHE_DIR to a folder of your own",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCacheDir(
            str(root),
            f"the cache folder has mode {stat.S_IMODE(st.st_mode):o}, so other users can plant entries "
            f"in it; chmod 700 {root}",
        )
    return root


def _max_artifact_bytes() -> int:
    raw = os.environ.get("MODELFLEET_MAX_ARTIFACT_MB", "51200")
    try:
        return int(float(raw) * MIB)
    except ValueError:
        raise StorageError("MODELFLEET_MAX_ARTIFACT_MB", f"{raw!r} is not a number of megabytes") from None


def _manifest_digest(file_hashes: dict[str, str]) -> str:
    lines = "".join(f"{rel}\0{digest}\n" for rel, digest in sorted(file_hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_sha256(path: Path | str) -> str:
    """The sha256 to declare for an artifact: a file's own, or a folder's `directory_sha256`."""
    path = Path(path)
    return directory_sha256(path) if path.is_dir() else _file_sha256(path)


def directory_sha256(path: Path | str) -> str:
    """The sha256 to declare for a directory artifact (hash of its sorted file manifest)."""
    root = Path(path)
    return _manifest_digest(
        {file.relative_to(root).as_posix(): _file_sha256(file) for file in artifact_files(root, str(root))}
    )


class _Sink:
    """A write-only file that hashes, counts and reports progress as bytes stream through.

    It refuses, before writing it, a chunk that would take the file past its
    declared size or the artifact past its byte budget, so a server that
    never stops sending cannot fill the disk.
    """

    def __init__(
        self, path: Path, on_bytes: Callable[[int], None], *, uri: str, rel: str, declared: int | None, budget: int
    ):
        self.file = path.open("wb")
        self.digest = hashlib.sha256()
        self.size = 0
        self.on_bytes = on_bytes
        self.uri, self.rel, self.declared, self.budget = uri, rel, declared, budget

    def write(self, chunk: bytes) -> int:
        if self.declared is not None and self.size + len(chunk) > self.declared:
            raise ArtifactTooLarge(
                self.uri,
                f"{self.rel} sent more than the {self.declared} bytes it declared; "
                "the object changed during the download or the server misbehaves; fetch it again",
            )
        if self.size + len(chunk) > self.budget:
            raise _over_cap(self.uri)
        self.file.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)
        self.on_bytes(len(chunk))
        return len(chunk)

    def close(self) -> None:
        self.file.close()


def _over_cap(uri: str) -> ArtifactTooLarge:
    return ArtifactTooLarge(
        uri,
        f"the artifact is larger than MODELFLEET_MAX_ARTIFACT_MB ({_max_artifact_bytes() / MIB:g} MB); "
        "raise that setting if an artifact this large is expected",
    )


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
    sizes = [i.size for _, _, i in files]
    total = sum(s for s in sizes if s is not None) if None not in sizes else None
    cap = _max_artifact_bytes()
    if total is not None and total > cap:  # known up front: refuse before downloading anything
        raise _over_cap(str(uri))
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
        sink = _Sink(target, on_bytes, uri=str(uri), rel=rel, declared=info.size, budget=cap - done)
        try:
            provider.download(source, cast(BinaryIO, sink))  # providers only ever write() to it
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
    root = _private_root(cache_root(cache_dir))
    corrupt = None
    if sha256:  # content-addressed: a hit needs no network, only a re-hash
        entry = root / "sha256" / sha256
        if entry.exists():
            if _intact(entry, sha256):
                return _only_child(entry)
            corrupt = next(entry.iterdir(), entry) if entry.is_dir() else entry
            log.warning(
                "%s no longer hashes to sha256 %s (disk fault or tampering); downloading %s again", corrupt, sha256, uri
            )
            with _lock(root, sha256):
                if _intact(entry, sha256):  # another process replaced it while we hashed
                    return _only_child(entry)
                _discard(root, entry)
    try:
        return _fill(root, uri, parsed, sha256, progress)
    except StorageError as exc:
        if corrupt is None or isinstance(exc, ChecksumMismatch):
            raise
        raise ChecksumMismatch(
            uri,
            f"the cached copy {corrupt} no longer hashes to sha256 {sha256} and was removed, and downloading it "
            f"again failed ({exc.__class__.__name__}: {exc}); restore access to the artifact and fetch again",
        ) from exc


def _lock(root: Path, key: str) -> FileLock:
    for sub in ("tmp", "locks"):
        (root / sub).mkdir(exist_ok=True)
    return FileLock(str(root / "locks" / f"{key}.lock"))


def _fill(root: Path, uri: str, parsed: ParsedURI, sha256: str | None, progress: Progress | None) -> Path:
    """The artifact's cache entry, downloaded unless it is there already."""
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
    entry.parent.mkdir(exist_ok=True)
    with _lock(root, key):
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
                    uri,
                    f"expected sha256 {sha256} but the downloaded bytes hash to {actual}; "
                    "re-publish the artifact or fix artifact.sha256",
                )
            os.rename(folder, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _only_child(entry)


def _intact(entry: Path, sha256: str) -> bool:
    """Does a sha256 entry still hash to its key?"""
    try:
        item = _only_child(entry)
        actual = directory_sha256(item) if item.is_dir() else _file_sha256(item)
    except (StopIteration, OSError, SymlinkInArtifact):  # emptied, unreadable, or a planted link
        return False
    return actual == sha256


def _discard(root: Path, entry: Path) -> None:
    """Remove an entry by first renaming it away, so no one ever sees it half deleted."""
    trash = Path(tempfile.mkdtemp(dir=root / "tmp", prefix="corrupt-"))
    try:
        os.rename(entry, trash / "entry")
    except FileNotFoundError:
        pass
    shutil.rmtree(trash, ignore_errors=True)


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
        for file in artifact_files(local, str(local)):  # the whole folder is checked before anything is published
            provider.upload(file, child(target, file.relative_to(local).as_posix()))
    else:
        provider.upload(local, parsed)
