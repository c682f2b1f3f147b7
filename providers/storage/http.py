"""https:// (and http://) with httpx: read-only, single files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import httpx

from ._base import CHUNK_BYTES, ObjectInfo
from ._errors import AccessDenied, ArtifactNotFound, StorageError, StorageUnavailable
from ._redirects import MAX_REDIRECTS, check_redirect
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
        # Redirects are followed by `_open`, which checks each hop before connecting to it.
        return httpx.Client(follow_redirects=False, timeout=httpx.Timeout(30.0, connect=5.0))

    @contextmanager
    def _open(self, method: str, uri: ParsedURI) -> Iterator[httpx.Response]:
        """A streamed response from `uri`, after the redirects `check_redirect` allows."""
        start = httpx.URL(str(uri))
        request = self.client.build_request(method, start)
        for _ in range(MAX_REDIRECTS + 1):
            response = self.client.send(request, stream=True, follow_redirects=False)
            if response.next_request is None:
                try:
                    yield response
                finally:
                    response.close()
                return
            response.close()
            check_redirect(str(uri), start, request.url, response.next_request.url)
            request = response.next_request
        raise StorageError(
            str(uri), f"more than {MAX_REDIRECTS} redirects; point the artifact URI at the final location"
        )

    def is_dir(self, uri: ParsedURI) -> bool:
        if uri.is_dir:
            raise StorageError(
                str(uri), "HTTP has no folder listing: publish a single file (e.g. a .pt2 or .safetensors)"
            )
        return False

    def stat(self, uri: ParsedURI) -> ObjectInfo:
        try:
            with self._open("HEAD", uri) as response:
                pass
            if response.status_code == 405:  # servers without HEAD: read the headers of a GET
                with self._open("GET", uri) as response:
                    pass
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
            with self._open("GET", uri) as response:
                _check(uri, response)
                for chunk in response.iter_raw(CHUNK_BYTES):
                    sink.write(chunk)
        except httpx.HTTPError as exc:  # includes a body cut short (RemoteProtocolError)
            raise StorageUnavailable(
                str(uri), f"download interrupted ({exc.__class__.__name__}: {exc}); retry"
            ) from None

    def upload(self, local: Path, uri: ParsedURI) -> None:
        raise StorageError(str(uri), "https:// is read-only here; publish to s3://, gs://, az:// or a file path")
