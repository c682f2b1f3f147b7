"""Downloads stop at the object's declared size and at MODELFLEET_MAX_ARTIFACT_MB, whatever the provider sends."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from providers.storage import ArtifactTooLarge, fetch
from tests.storage.conftest import cache_files

MB = 1024 * 1024
DATA = os.urandom(3 * MB + 5)


def _watch() -> tuple[list[int], Callable[[int, int | None], None]]:
    """A progress callback and the most bytes it has seen reported."""
    seen = [0]

    def progress(done: int, total: int | None) -> None:
        seen[0] = max(seen[0], done)

    return seen, progress


def test_object_that_outgrows_its_declared_size_is_cut_off(http_server, cache: Path) -> None:
    url, root, server = http_server
    (root / "grows.bin").write_bytes(DATA)
    declared = len(DATA) // 2  # what HEAD announces
    seen, progress = _watch()
    gets_before = server.gets
    uri = f"{url}/grows/grows.bin"
    with pytest.raises(ArtifactTooLarge) as info:
        fetch(uri, cache_dir=cache, progress=progress)
    assert uri in str(info.value) and str(declared) in str(info.value)
    assert seen[0] <= declared  # not a byte past what was declared reached the disk
    assert server.gets - gets_before == 1  # more bytes than declared is no transient fault: no retry
    assert cache_files(cache) == []


def test_unsized_download_stops_at_the_global_cap(http_server, cache: Path, monkeypatch) -> None:
    url, root, _ = http_server
    (root / "unsized.bin").write_bytes(DATA)
    monkeypatch.setenv("MODELFLEET_MAX_ARTIFACT_MB", "1")
    seen, progress = _watch()
    uri = f"{url}/unsized/unsized.bin"
    with pytest.raises(ArtifactTooLarge, match="MODELFLEET_MAX_ARTIFACT_MB") as info:
        fetch(uri, cache_dir=cache, progress=progress)
    assert uri in str(info.value)
    assert seen[0] <= MB
    assert cache_files(cache) == []


def test_unsized_download_under_the_cap_is_fine(http_server, cache: Path, monkeypatch) -> None:
    url, root, _ = http_server
    (root / "unsized-ok.bin").write_bytes(DATA)
    monkeypatch.setenv("MODELFLEET_MAX_ARTIFACT_MB", "4")
    assert fetch(f"{url}/unsized/unsized-ok.bin", cache_dir=cache).read_bytes() == DATA


def test_directory_artifact_is_capped_as_a_whole(tmp_path: Path, cache: Path, monkeypatch) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for i in range(3):  # each file is under the cap, together they are not
        (folder / f"part-{i}.bin").write_bytes(DATA[: MB // 2])
    monkeypatch.setenv("MODELFLEET_MAX_ARTIFACT_MB", "1")
    with pytest.raises(ArtifactTooLarge, match="MODELFLEET_MAX_ARTIFACT_MB"):
        fetch(f"file://{folder}/", cache_dir=cache)
    assert cache_files(cache) == []
