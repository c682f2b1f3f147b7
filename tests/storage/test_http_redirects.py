"""HTTP redirects: same-origin ones are followed; ones to internal addresses or down to http:// are refused.

A model server usually runs where 169.254.169.254 hands out cloud credentials,
so a redirect from an artifact host must not be able to point our client there.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from providers.storage import StorageError, UnsafeRedirect, fetch, parse_uri
from providers.storage.http import Provider
from tests.storage.conftest import cache_files

DATA = os.urandom(70_000)


@pytest.fixture()
def served(http_server) -> tuple[str, str]:
    url, root, _ = http_server
    (root / "redirected.bin").write_bytes(DATA)
    return url, "redirected.bin"


def test_same_origin_redirect_is_followed(served, cache: Path) -> None:
    url, name = served
    for location in (f"/{name}", f"{url}/{name}"):  # relative and absolute
        path = fetch(f"{url}/redirect?to={quote(location)}", cache_dir=cache)
        assert path.read_bytes() == DATA


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/role",  # AWS/GCP/Azure metadata
        "http://[fd00:ec2::254]/latest/meta-data/iam/security-credentials/role",  # AWS metadata over IPv6
        "http://[::ffff:169.254.169.254]/latest/meta-data/iam/security-credentials/role",  # IPv4-mapped
        "http://10.0.0.1/admin/model.bin",
        "http://[fe80::1]/model.bin",
    ],
)
def test_redirect_to_an_internal_address_is_refused(served, cache: Path, target: str) -> None:
    url, _ = served
    uri = f"{url}/redirect?to={quote(target)}"
    with pytest.raises(UnsafeRedirect) as info:
        fetch(uri, cache_dir=cache)
    message = str(info.value)
    assert uri in message and target in message
    assert cache_files(cache) == []


def test_redirect_to_another_loopback_origin_is_refused(served, other_http_server, cache: Path) -> None:
    # Both targets would really serve the file, so only the check can stop the fetch.
    url, name = served
    port = other_http_server[0].rsplit(":", 1)[1]
    for target in (
        f"{other_http_server[0]}/{name}",  # another port on 127.0.0.1
        f"http://localhost:{url.rsplit(':', 1)[1]}/{name}",  # a name that resolves to loopback
        f"http://0.0.0.0:{port}/{name}",  # unspecified: Linux connects it to loopback
    ):
        uri = f"{url}/redirect?to={quote(target)}"
        with pytest.raises(UnsafeRedirect, match="redirect") as info:
            fetch(uri, cache_dir=cache)
        assert uri in str(info.value) and target in str(info.value)
    assert cache_files(cache) == []


def test_redirect_loop_stops_after_a_few_hops(http_server, cache: Path) -> None:
    url, _, server = http_server
    before = server.redirects
    with pytest.raises(StorageError, match="redirects") as info:
        fetch(f"{url}/loop", cache_dir=cache)
    assert f"{url}/loop" in str(info.value)
    assert server.redirects - before <= 6


def test_https_to_http_downgrade_is_refused(tmp_path: Path) -> None:
    # No TLS server in the test kit: the provider's client talks to a MockTransport instead.
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            return httpx.Response(302, headers={"Location": "http://models.example/model.bin"})
        return httpx.Response(200, content=b"served over plain http")

    provider = Provider()
    provider.client = httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=True)
    uri = parse_uri("https://models.example/model.bin")
    with pytest.raises(UnsafeRedirect, match="http://models.example/model.bin") as info:
        provider.stat(uri)
    assert "https://models.example/model.bin" in str(info.value)
    with (tmp_path / "sink").open("wb") as sink, pytest.raises(UnsafeRedirect):
        provider.download(uri, sink)
    assert (tmp_path / "sink").read_bytes() == b""
