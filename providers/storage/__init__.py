"""Artifact storage: fetch by URI into a verified local cache, upload for publishing.

    from providers.storage import fetch
    path = fetch("s3://models/digits/1/model.safetensors", sha256="...")

Schemes: file:// (and plain paths), s3://, gs://, az://, http(s)://. Each
provider translates its SDK's errors into the tree below, so callers catch
`StorageError` and nothing cloud-specific.
"""

from ._cache import artifact_sha256, cache_root, directory_sha256, fetch, upload
from ._errors import (
    AccessDenied,
    ArtifactNotFound,
    ArtifactTooLarge,
    ChecksumMismatch,
    MissingExtra,
    StorageError,
    StorageUnavailable,
    SymlinkInArtifact,
    UnsafeCacheDir,
    UnsafeRedirect,
    UnsupportedScheme,
)
from ._registry import PROVIDERS, get_provider
from ._uri import ParsedURI, parse_uri, resolve_uri, scheme_of

__all__ = [
    "PROVIDERS",
    "AccessDenied",
    "ArtifactNotFound",
    "ArtifactTooLarge",
    "ChecksumMismatch",
    "MissingExtra",
    "ParsedURI",
    "StorageError",
    "StorageUnavailable",
    "SymlinkInArtifact",
    "UnsafeCacheDir",
    "UnsafeRedirect",
    "artifact_sha256",
    "UnsupportedScheme",
    "cache_root",
    "directory_sha256",
    "fetch",
    "get_provider",
    "parse_uri",
    "resolve_uri",
    "scheme_of",
    "upload",
]
