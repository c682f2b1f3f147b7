"""https:// (and http://) with httpx: read-only, single files."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import httpx

from ._base import CHUNK_BYTES, ObjectInfo
from ._errors import AccessDenied, ArtifactNotFound, StorageError, StorageUnavailable
from ._uri import ParsedURI


def _check(uri: ParsedURI, response: httpx.Response) -> None:
    status = response.status_code
    if status == 404 or status == 410:
        raise ArtifactNotFound(str(uri), f"HTTP {status}; check the URL")
    if status in (401, 403):
        raise AccessDenied(str(uri), f"HTTP {status}; the server wants credentials (use a pre-signed URL)")
    if status >= 400:
        raise StorageUnavailable(str(uri), f"HTTP {status}; retry later")


class Provider:
    @cached_property
    def client(self) -> httpx.Client:
        return httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, connect=5.0))

    def is_dir(self, uri: ParsedURI) -> bool:
        if uri.is_dir:
            raise StorageError(str(uri), "HTTP has no folder listing: publish a single file (e.g. a .pt2 or .safetensors)")
        return False

    def stat(self, uri: ParsedURI) -> ObjectInfo:
        try:
            response = self.client.head(str(uri))
            if response.status_code == 405:  # servers without HEAD: read the headers of a GET
                with self.client.stream("GET", str(uri)) as response:
                    _check(uri, response)
            _check(uri, response)
        except httpx.HTTPError as exc:
            raise StorageUnavailable(str(uri), f"cannot reach the server ({exc.__class__.__name__}: {exc})") from None
        length = response.headers.get("content-length")
        version = response.headers.get("etag") or response.headers.get("last-modified") or ""
        return ObjectInfo(int(length) if length and length.isdigit() else None, f"{version}|{length}")

    def list(self, uri: ParsedURI) -> list[tuple[str, ObjectInfo]]:
        self.is_dir(uri)
        raise StorageError(str(uri), "HTTP has no folder listing")

    def download(self, uri: ParsedURI, sink: BinaryIO) -> None:
        try:
            with self.client.stream("GET", str(uri)) as response:
                _check(uri, response)
                for chunk in response.iter_raw(CHUNK_BYTES):
                    sink.write(chunk)
        except httpx.HTTPError as exc:  # includes a body cut short (RemoteProtocolError)
            raise StorageUnavailable(str(uri), f"download interrupted ({exc.__class__.__name__}: {exc}); retry") from None

    def upload(self, local: Path, uri: ParsedURI) -> None:
        raise StorageError(str(uri), "https:// is read-only here; publish to s3://, gs://, az:// or a file path")
