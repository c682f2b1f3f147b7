"""az://container/path with azure-storage-blob. Account and credentials: AZURE_STORAGE_CONNECTION_STRING."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from azure.core import exceptions as azexc
from azure.storage.blob import BlobServiceClient

from ._base import ObjectInfo
from ._errors import AccessDenied, ArtifactNotFound, StorageError, StorageUnavailable
from ._uri import ParsedURI


def _translate(uri: ParsedURI, exc: Exception) -> StorageError:
    if isinstance(exc, azexc.ResourceNotFoundError):
        return ArtifactNotFound(str(uri), "no such blob or container; check the container and path")
    if isinstance(exc, azexc.ClientAuthenticationError) or getattr(exc, "status_code", None) == 403:
        return AccessDenied(str(uri), "access denied; check AZURE_STORAGE_CONNECTION_STRING (account key or SAS)")
    return StorageUnavailable(
        str(uri),
        f"cannot reach Azure Blob ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
        "check the endpoint in AZURE_STORAGE_CONNECTION_STRING and the network",
    )


class Provider:
    @cached_property
    def service(self) -> BlobServiceClient:
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if not conn:
            raise AccessDenied(
                "az://", "set AZURE_STORAGE_CONNECTION_STRING to the storage account's connection string"
            )
        return BlobServiceClient.from_connection_string(conn, retry_total=1, connection_timeout=5)

    def _blob(self, uri: ParsedURI):
        return self.service.get_blob_client(uri.bucket, uri.key)

    def is_dir(self, uri: ParsedURI) -> bool:
        return uri.is_dir

    def stat(self, uri: ParsedURI) -> ObjectInfo:
        try:
            props = self._blob(uri).get_blob_properties()
        except azexc.AzureError as exc:
            raise _translate(uri, exc) from None
        return ObjectInfo(props.size, str(props.etag))

    def list(self, uri: ParsedURI) -> list[tuple[str, ObjectInfo]]:
        try:
            blobs = list(self.service.get_container_client(uri.bucket).list_blobs(name_starts_with=uri.key))
        except azexc.AzureError as exc:
            raise _translate(uri, exc) from None
        found = [(b.name[len(uri.key) :], ObjectInfo(b.size, str(b.etag))) for b in blobs if not b.name.endswith("/")]
        if not found:
            raise ArtifactNotFound(str(uri), "no blobs under this prefix; check the container and prefix")
        return found

    def download(self, uri: ParsedURI, sink: BinaryIO) -> None:
        try:
            for chunk in self._blob(uri).download_blob(max_concurrency=1).chunks():
                sink.write(chunk)
        except azexc.AzureError as exc:
            raise _translate(uri, exc) from None

    def upload(self, local: Path, uri: ParsedURI) -> None:
        try:
            with local.open("rb") as f:
                self._blob(uri).upload_blob(f, overwrite=True, length=local.stat().st_size)
        except azexc.AzureError as exc:
            raise _translate(uri, exc) from None
