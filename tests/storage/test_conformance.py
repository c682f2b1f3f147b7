"""One conformance suite, run against every storage provider on a real server.

Objects are seeded and removed through each cloud's own SDK (not through the
code under test), then read back through `providers.storage.fetch`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from providers.storage import (
    ArtifactNotFound,
    ArtifactTooLarge,
    ChecksumMismatch,
    StorageError,
    directory_sha256,
    fetch,
    upload,
)
from tests.storage.conftest import cache_files, s3_environment


@dataclass
class Backend:
    name: str
    uri: Callable[[str], str]  # key -> URI
    put: Callable[[str, bytes], None]
    delete: Callable[[str], None]
    supports_dirs: bool = True
    supports_upload: bool = True
    notes: dict = field(default_factory=dict)


def _file_backend(root: Path) -> Backend:
    def put(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return Backend("file", lambda key: f"file://{root / key}", put, lambda key: (root / key).unlink())


def _http_backend(url: str, root: Path) -> Backend:
    file = _file_backend(root)
    return Backend(
        "http", lambda key: f"{url}/{key}", file.put, file.delete, supports_dirs=False, supports_upload=False
    )


def _s3_backend(endpoint: str, env: pytest.MonkeyPatch) -> Backend:
    import boto3

    for name, value in s3_environment(endpoint).items():
        env.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    return Backend(
        "s3",
        lambda key: f"s3://models/{key}",
        lambda key, data: client.put_object(Bucket="models", Key=key, Body=data),
        lambda key: client.delete_object(Bucket="models", Key=key),
    )


def _gcs_backend(endpoint: str, env: pytest.MonkeyPatch) -> Backend:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    env.setenv("STORAGE_EMULATOR_HOST", endpoint)
    client = storage.Client(project="modelfleet", credentials=AnonymousCredentials())
    bucket = client.create_bucket("models")
    return Backend(
        "gs",
        lambda key: f"gs://models/{key}",
        lambda key, data: bucket.blob(key).upload_from_string(data),
        lambda key: bucket.blob(key).delete(),
    )


def _azure_backend(connection_string: str, env: pytest.MonkeyPatch) -> Backend:
    from azure.storage.blob import BlobServiceClient

    env.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    container = BlobServiceClient.from_connection_string(connection_string).create_container("models")
    return Backend(
        "az",
        lambda key: f"az://models/{key}",
        lambda key, data: container.upload_blob(key, data, overwrite=True),
        lambda key: container.delete_blob(key),
    )


@pytest.fixture(scope="session", params=["file", "http", "s3", "gs", "az"])
def backend(request, tmp_path_factory) -> Iterator[Backend]:
    """Each provider on its emulator; the SDKs find their endpoints in the environment, restored afterwards."""
    name = request.param
    with pytest.MonkeyPatch.context() as env:
        if name == "file":
            yield _file_backend(tmp_path_factory.mktemp("files"))
        elif name == "http":
            url, root, _ = request.getfixturevalue("http_server")
            yield _http_backend(url, root)
        elif name == "s3":
            yield _s3_backend(request.getfixturevalue("s3_server"), env)
        elif name == "gs":
            yield _gcs_backend(request.getfixturevalue("gcs_server"), env)
        else:
            yield _azure_backend(request.getfixturevalue("azure_server"), env)


_counter = iter(range(10**9))


def _key(stem: str) -> str:
    """A fresh key per test, so tests never see each other's objects."""
    return f"t{next(_counter)}/{stem}"


PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)  # several 1 MiB chunks and a ragged tail
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class TestStorageConformance:
    def test_fetch_returns_identical_bytes(self, backend: Backend, cache: Path) -> None:
        key = _key("model.bin")
        backend.put(key, PAYLOAD)
        path = fetch(backend.uri(key), cache_dir=cache)
        assert path.read_bytes() == PAYLOAD and path.name == "model.bin"

    def test_declared_sha256_is_verified(self, backend: Backend, cache: Path) -> None:
        key = _key("model.bin")
        backend.put(key, PAYLOAD)
        assert fetch(backend.uri(key), sha256=PAYLOAD_SHA, cache_dir=cache).read_bytes() == PAYLOAD

    def test_checksum_mismatch_leaves_nothing_in_the_cache(self, backend: Backend, cache: Path) -> None:
        key = _key("model.bin")
        backend.put(key, PAYLOAD)
        wrong = hashlib.sha256(b"something else").hexdigest()
        with pytest.raises(ChecksumMismatch) as info:
            fetch(backend.uri(key), sha256=wrong, cache_dir=cache)
        assert backend.uri(key) in str(info.value) and wrong in str(info.value) and PAYLOAD_SHA in str(info.value)
        assert cache_files(cache) == []

    def test_missing_object_is_artifact_not_found(self, backend: Backend, cache: Path) -> None:
        uri = backend.uri(_key("absent.bin"))
        with pytest.raises(ArtifactNotFound) as info:
            fetch(uri, cache_dir=cache)
        assert uri in str(info.value)
        assert cache_files(cache) == []

    def test_second_fetch_is_served_from_the_cache(self, backend: Backend, cache: Path) -> None:
        key = _key("model.bin")
        backend.put(key, PAYLOAD)
        first = fetch(backend.uri(key), sha256=PAYLOAD_SHA, cache_dir=cache)
        backend.delete(key)  # the provider could no longer serve it
        assert fetch(backend.uri(key), sha256=PAYLOAD_SHA, cache_dir=cache) == first
        assert first.read_bytes() == PAYLOAD

    def test_tampered_cache_entry_is_replaced_by_a_fresh_verified_copy(self, backend: Backend, cache: Path) -> None:
        key = _key("model.bin")
        backend.put(key, PAYLOAD)
        fetch(backend.uri(key), sha256=PAYLOAD_SHA, cache_dir=cache).write_bytes(b"tampered")
        assert fetch(backend.uri(key), sha256=PAYLOAD_SHA, cache_dir=cache).read_bytes() == PAYLOAD

    def test_artifact_over_the_size_cap_is_refused_and_leaves_nothing_in_the_cache(
        self, backend: Backend, cache: Path, monkeypatch
    ) -> None:
        key = _key("model.bin")
        backend.put(key, PAYLOAD)
        monkeypatch.setenv("MODELFLEET_MAX_ARTIFACT_MB", "1")
        with pytest.raises(ArtifactTooLarge, match="MODELFLEET_MAX_ARTIFACT_MB") as info:
            fetch(backend.uri(key), sha256=PAYLOAD_SHA, cache_dir=cache)
        assert backend.uri(key) in str(info.value)
        assert cache_files(cache) == []

    def test_interrupted_download_leaves_the_cache_clean_and_a_retry_succeeds(
        self, backend: Backend, cache: Path
    ) -> None:
        key = _key("model.bin")
        backend.put(key, PAYLOAD)

        def crash_after_first_chunk(done: int, total: int | None) -> None:
            raise KeyboardInterrupt  # as if the user hit Ctrl-C mid-download

        with pytest.raises(KeyboardInterrupt):
            fetch(backend.uri(key), sha256=PAYLOAD_SHA, cache_dir=cache, progress=crash_after_first_chunk)
        assert cache_files(cache) == []
        assert fetch(backend.uri(key), sha256=PAYLOAD_SHA, cache_dir=cache).read_bytes() == PAYLOAD

    def test_concurrent_fetches_download_once(self, backend: Backend, cache: Path) -> None:
        key = _key("model.bin")
        backend.put(key, PAYLOAD)
        downloaders: set[int] = set()

        def progress(done: int, total: int | None) -> None:
            downloaders.add(threading.get_ident())

        with ThreadPoolExecutor(6) as pool:
            paths = list(pool.map(lambda _: fetch(backend.uri(key), cache_dir=cache, progress=progress), range(6)))
        assert len(set(paths)) == 1 and paths[0].read_bytes() == PAYLOAD
        assert len(downloaders) == 1

    def test_changed_object_without_sha256_is_refetched(self, backend: Backend, cache: Path) -> None:
        key = _key("model.bin")
        backend.put(key, b"version one")
        assert fetch(backend.uri(key), cache_dir=cache).read_bytes() == b"version one"
        backend.put(key, b"version two, longer")
        assert fetch(backend.uri(key), cache_dir=cache).read_bytes() == b"version two, longer"

    def test_directory_artifact_round_trip(self, backend: Backend, cache: Path, tmp_path: Path) -> None:
        if not backend.supports_dirs:
            with pytest.raises(StorageError, match="single file"):
                fetch(backend.uri(_key("folder/")), cache_dir=cache)
            return
        source = tmp_path / "model"
        files = {"config.json": b"{}", "weights/part-0.bin": PAYLOAD[:1000], "weights/part-1.bin": PAYLOAD[1000:5000]}
        prefix = _key("model")
        for rel, data in files.items():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            (source / rel).write_bytes(data)
            backend.put(f"{prefix}/{rel}", data)
        digest = directory_sha256(source)
        folder = fetch(backend.uri(prefix + "/"), sha256=digest, cache_dir=cache)
        assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
        with pytest.raises(ChecksumMismatch):
            fetch(
                backend.uri(prefix + "/"), sha256=hashlib.sha256(b"x").hexdigest(), cache_dir=tmp_path / "other-cache"
            )
        assert cache_files(tmp_path / "other-cache") == []

    def test_upload_then_fetch(self, backend: Backend, cache: Path, tmp_path: Path) -> None:
        local = tmp_path / "published.bin"
        local.write_bytes(PAYLOAD)
        uri = backend.uri(_key("published.bin"))
        if not backend.supports_upload:
            with pytest.raises(StorageError, match="read-only"):
                upload(local, uri)
            return
        upload(local, uri)
        assert fetch(uri, sha256=PAYLOAD_SHA, cache_dir=cache).read_bytes() == PAYLOAD
        folder = tmp_path / "folder"
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "a.txt").write_text("a")
        (folder / "b.txt").write_text("b")
        prefix = backend.uri(_key("folder") + "/")
        upload(folder, prefix)
        fetched = fetch(prefix, sha256=directory_sha256(folder), cache_dir=cache)
        assert (fetched / "sub" / "a.txt").read_text() == "a" and (fetched / "b.txt").read_text() == "b"
