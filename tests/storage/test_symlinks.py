"""A symlink inside a directory artifact is refused: it could carry files from outside into the cache or a bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.storage import SymlinkInArtifact, directory_sha256, fetch, upload
from tests.storage.conftest import cache_files


@pytest.fixture(params=["file", "folder"])
def folder(request, tmp_path: Path) -> tuple[Path, Path]:
    """A model folder with one symlink reaching outside it; returns (folder, link)."""
    secret = tmp_path / "outside" / "auth_token"
    secret.parent.mkdir()
    secret.write_text("do not publish")
    model = tmp_path / "model"
    (model / "weights").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    link = model / "weights" / ("token" if request.param == "file" else "more")
    link.symlink_to(secret if request.param == "file" else secret.parent)
    return model, link


def test_fetch_refuses_a_symlink_inside_a_directory_artifact(folder, cache: Path) -> None:
    model, link = folder
    with pytest.raises(SymlinkInArtifact) as info:
        fetch(f"{model}/", cache_dir=cache)
    assert str(link) in str(info.value)
    assert cache_files(cache) == []


def test_directory_sha256_refuses_a_symlink(folder) -> None:
    model, link = folder
    with pytest.raises(SymlinkInArtifact, match=str(link)):
        directory_sha256(model)


def test_upload_refuses_a_symlink_and_publishes_nothing(folder, tmp_path: Path) -> None:
    model, link = folder
    bucket = tmp_path / "bucket"
    with pytest.raises(SymlinkInArtifact, match=str(link)):
        upload(model, f"file://{bucket}/model/")
    assert not bucket.exists()


def test_symlinked_artifact_root_and_single_files_still_work(tmp_path: Path, cache: Path) -> None:
    # The spec author's own path may be a link (e.g. current -> v3); only links inside are refused.
    real = tmp_path / "v3"
    real.mkdir()
    (real / "model.bin").write_bytes(b"weights")
    (tmp_path / "current").symlink_to(real)
    (tmp_path / "latest.bin").symlink_to(real / "model.bin")
    assert (fetch(f"file://{tmp_path}/current/", cache_dir=cache) / "model.bin").read_bytes() == b"weights"
    assert fetch(f"file://{tmp_path}/latest.bin", cache_dir=cache).read_bytes() == b"weights"
