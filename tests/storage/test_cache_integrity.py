"""The cache is re-verified on every sha256 hit, and its folder must be ours alone."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest

from providers.storage import ChecksumMismatch, UnsafeCacheDir, directory_sha256, fetch
from tests.storage.conftest import cache_files

DATA = b"weights " * 10_000
DATA_SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.bin"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


def test_tampered_file_is_downloaded_again_with_a_warning(source: Path, cache: Path, caplog) -> None:
    cached = fetch(str(source), sha256=DATA_SHA, cache_dir=cache)
    cached.write_bytes(b"tampered")
    with caplog.at_level(logging.WARNING, logger="providers.storage"):
        again = fetch(str(source), sha256=DATA_SHA, cache_dir=cache)
    assert again.read_bytes() == DATA
    assert any(str(cached) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_tampered_file_whose_source_is_gone_is_a_checksum_mismatch(source: Path, cache: Path) -> None:
    cached = fetch(str(source), sha256=DATA_SHA, cache_dir=cache)
    cached.write_bytes(b"tampered")
    source.unlink()
    with pytest.raises(ChecksumMismatch) as info:
        fetch(str(source), sha256=DATA_SHA, cache_dir=cache)
    assert str(source) in str(info.value) and str(cached) in str(info.value)
    assert cache_files(cache) == []  # the bad copy is not served again either


def test_tampered_directory_entry_is_downloaded_again(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "model"
    (folder / "weights").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "weights" / "part-0.bin").write_bytes(DATA)
    digest = directory_sha256(folder)
    cached = fetch(f"{folder}/", sha256=digest, cache_dir=cache)
    (cached / "weights" / "extra.py").write_text("import os")  # an added file changes the manifest too
    again = fetch(f"{folder}/", sha256=digest, cache_dir=cache)
    assert sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file()) == [
        "config.json",
        "weights/part-0.bin",
    ]


def test_missing_cache_folder_is_created_private(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "fresh" / "cache"
    fetch(str(source), cache_dir=root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o757])
def test_cache_folder_writable_by_others_is_refused(source: Path, cache: Path, mode: int) -> None:
    cache.mkdir(mode=0o700)
    cache.chmod(mode)
    with pytest.raises(UnsafeCacheDir, match="chmod 700") as info:
        fetch(str(source), sha256=DATA_SHA, cache_dir=cache)
    assert str(cache) in str(info.value)
    assert cache_files(cache) == []


def test_cache_folder_owned_by_someone_else_is_refused(source: Path, tmp_path: Path) -> None:
    if os.getuid() == 0:
        root = tmp_path / "theirs"
        root.mkdir(mode=0o700)
        os.chown(root, 65534, 65534)  # nobody
    else:
        root = Path("/")  # root's, and not writable by us
    with pytest.raises(UnsafeCacheDir, match="chown") as info:
        fetch(str(source), cache_dir=root)
    assert str(root) in str(info.value)
