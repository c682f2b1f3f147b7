"""gs:// with google-cloud-storage. Endpoint/credentials: STORAGE_EMULATOR_HOST or Google default credentials."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from google.api_core import exceptions as gexc
from google.auth.exceptions import DefaultCredentialsError, TransportError
from google.cloud import storage
from requests.exceptions import RequestException

from ._base import ObjectInfo
from ._errors import AccessDenied, ArtifactNotFound, StorageError, StorageUnavailable
from ._uri import ParsedURI


def _translate(uri: ParsedURI, exc: Exception) -> StorageError:
    if isinstance(exc, gexc.NotFound):
        return ArtifactNotFound(str(uri), "no such object or bucket; check the bucket and path")
    if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized)):
        return AccessDenied(str(uri), "access denied; check the service account's roles on the bucket")
    if isinstance(exc, DefaultCredentialsError):
        return AccessDenied(
            str(uri), "no Google credentials; set GOOGLE_APPLICATION_CREDENTIALS (or STORAGE_EMULATOR_HOST)"
        )
    return StorageUnavailable(
        str(uri), f"cannot reach GCS ({exc.__class__.__name__}: {exc}); check STORAGE_EMULATOR_HOST and the network"
    )


_ERRORS = (gexc.GoogleAPIError, DefaultCredentialsError, TransportError, RequestException, ConnectionError)


class Provider:
    @cached_property
    def client(self) -> storage.Client:
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            return storage.Client(
                project=os.environ.get("GOOGLE_CLOUD_PROJECT", "modelfleet"), credentials=AnonymousCredentials()
            )
        return storage.Client()

    def is_dir(self, uri: ParsedURI) -> bool:
        return uri.is_dir

    def stat(self, uri: ParsedURI) -> ObjectInfo:
        try:
            blob = self.client.bucket(uri.bucket).get_blob(uri.key)
        except _ERRORS as exc:
            raise _translate(uri, exc) from None
        if blob is None:
            raise ArtifactNotFound(str(uri), "no such object; check the bucket and path")
        return ObjectInfo(blob.size, str(blob.generation or blob.etag))

    def list(self, uri: ParsedURI) -> list[tuple[str, ObjectInfo]]:
        try:
            blobs = list(self.client.list_blobs(uri.bucket, prefix=uri.key))
        except _ERRORS as exc:
            raise _translate(uri, exc) from None
        found = [
            (b.name[len(uri.key) :], ObjectInfo(b.size, str(b.generation or b.etag)))
            for b in blobs
            if not b.name.endswith("/")
        ]
        if not found:
            raise ArtifactNotFound(str(uri), "no objects under this prefix; check the bucket and prefix")
        return found

    def download(self, uri: ParsedURI, sink: BinaryIO) -> None:
        try:
            self.client.bucket(uri.bucket).blob(uri.key).download_to_file(sink, checksum=None)
        except _ERRORS as exc:
            raise _translate(uri, exc) from None

    def upload(self, local: Path, uri: ParsedURI) -> None:
        try:
            self.client.bucket(uri.bucket).blob(uri.key).upload_from_filename(str(local))
        except _ERRORS as exc:
            raise _translate(uri, exc) from None
