"""One error tree for every storage provider.

Providers translate their SDK's exceptions into these at their boundary, so
callers never see botocore, google.api_core or azure.core exceptions. Each
message names the URI and what to do about it.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of all storage errors; `uri` is the artifact concerned."""

    def __init__(self, uri: str, message: str):
        self.uri = uri
        super().__init__(f"{uri}: {message}")


class UnsupportedScheme(StorageError):
    """No provider is registered for the URI's scheme."""


class MissingExtra(StorageError):
    """The provider's SDK is not installed; the message names the pip extra."""


class ArtifactNotFound(StorageError):
    """The object (or directory prefix) does not exist."""


class AccessDenied(StorageError):
    """Credentials are missing or lack permission."""


class ChecksumMismatch(StorageError):
    """Downloaded bytes do not hash to the sha256 the spec declares."""


class StorageUnavailable(StorageError):
    """The service could not be reached or kept failing after retries."""


class UnsafeRedirect(StorageError):
    """An HTTP redirect would downgrade to http:// or reach an internal address (e.g. cloud metadata)."""


class ArtifactTooLarge(StorageError):
    """A download outgrew the object's declared size or MODELFLEET_MAX_ARTIFACT_MB."""


class UnsafeCacheDir(StorageError):
    """The cache folder belongs to someone else or others can write to it, so its entries can't be trusted."""


class SymlinkInArtifact(StorageError):
    """A directory artifact holds a symlink, which could pull in files from outside it."""
