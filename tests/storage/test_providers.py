"""Provider-specific behaviour: cut connections, unreachable endpoints, registry errors, big artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from providers.storage import (
    PROVIDERS,
    MissingExtra,
    StorageUnavailable,
    UnsupportedScheme,
    fetch,
    get_provider,
    parse_uri,
)
from providers.storage._cache import ATTEMPTS
from tests.helpers import ROOT, free_port
from tests.storage.conftest import cache_files, s3_environment


def test_http_body_cut_short_is_retried_then_unavailable_and_leaves_the_cache_clean(http_server, cache: Path) -> None:
    url, root, server = http_server
    (root / "half.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    gets_before = server.gets
    with pytest.raises(StorageUnavailable) as info:
        fetch(f"{url}/truncated/half.bin", cache_dir=cache)
    assert "truncated/half.bin" in str(info.value) and "retry" in str(info.value)
    assert server.gets - gets_before == ATTEMPTS  # each attempt really went back to the server
    assert cache_files(cache) == []


def test_unreachable_s3_endpoint_names_the_setting(monkeypatch, cache: Path) -> None:
    from providers.storage.s3 import Provider

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with pytest.raises(StorageUnavailable, match="AWS_ENDPOINT_URL"):
        Provider().stat(parse_uri("s3://models/model.bin"))


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(UnsupportedScheme, match=r"unknown scheme 'ftp'.*s3://"):
        fetch("ftp://host/model.bin")


def test_missing_sdk_names_the_extra(monkeypatch) -> None:
    # A registry entry whose module cannot be imported stands for an SDK that is not installed.
    monkeypatch.setitem(PROVIDERS, "bogus", ("providers.storage._no_such_sdk", "bogus"))
    get_provider.cache_clear()
    try:
        with pytest.raises(MissingExtra, match=r"pip install 'modelfleet\[bogus\]'"):
            get_provider("bogus")
    finally:
        get_provider.cache_clear()


LARGE_MB = 200

_MEASURE = """
import json, resource, sys
from providers.storage import fetch, get_provider, parse_uri
uri, sha, cache = sys.argv[1:4]
get_provider(parse_uri(uri).scheme)  # SDK imported and client ready before the baseline
try:
    get_provider(parse_uri(uri).scheme).stat(parse_uri(uri))
except Exception:
    pass
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path = fetch(uri, sha256=sha, cache_dir=cache)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (after - before) / 1024, "size": path.stat().st_size}))
"""


@pytest.fixture(scope="module")
def large_file(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("large") / "large.bin"
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with path.open("wb") as f:
        for i in range(LARGE_MB):
            chunk = block[i % 256 :] + block[: i % 256]  # distinct blocks, cheap to make
            f.write(chunk)
            digest.update(chunk)
    yield path, digest.hexdigest()
    path.unlink()


@pytest.mark.parametrize("scheme", ["file", "http", "s3"])
def test_large_artifact_streams_without_being_held_in_memory(scheme, large_file, request, tmp_path: Path) -> None:
    path, sha = large_file
    env = dict(os.environ)
    if scheme == "file":
        uri = f"file://{path}"
    elif scheme == "http":
        url, root, _ = request.getfixturevalue("http_server")
        os.link(path, root / "large.bin") if not (root / "large.bin").exists() else None
        uri = f"{url}/large.bin"
    else:
        import boto3

        endpoint = request.getfixturevalue("s3_server")
        env.update(s3_environment(endpoint))
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="large")
        client.upload_file(str(path), "large", "large.bin")
        uri = "s3://large/large.bin"
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, uri, sha, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["size"] == LARGE_MB * 1024 * 1024
    assert result["grew_mb"] < 64, f"{scheme}: peak memory grew {result['grew_mb']:.0f} MB for a {LARGE_MB} MB artifact"
