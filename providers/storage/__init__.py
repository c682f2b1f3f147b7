"""Artifact storage: fetch by URI into a verified local cache, upload for publishing."""

from ._errors import (
    AccessDenied,
    ArtifactNotFound,
    ChecksumMismatch,
    MissingExtra,
    StorageError,
    StorageUnavailable,
    UnsupportedScheme,
)
from ._uri import ParsedURI, parse_uri, resolve_uri, scheme_of

__all__ = [
    "AccessDenied",
    "ArtifactNotFound",
    "ChecksumMismatch",
    "MissingExtra",
    "ParsedURI",
    "StorageError",
    "StorageUnavailable",
    "UnsupportedScheme",
    "parse_uri",
    "resolve_uri",
    "scheme_of",
]
