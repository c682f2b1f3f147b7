"""The provider interface: five small methods that every scheme implements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from ._uri import ParsedURI

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    size: int | None
    version: str  # changes whenever the content does (mtime, ETag, generation)


class Provider(Protocol):
    def is_dir(self, uri: ParsedURI) -> bool:
        """Does the URI name a directory (a prefix) rather than one object?"""

    def stat(self, uri: ParsedURI) -> ObjectInfo:
        """Size and version of one object; ArtifactNotFound if absent."""

    def list(self, uri: ParsedURI) -> list[tuple[str, ObjectInfo]]:
        """Objects under a directory URI as (relative path, info); ArtifactNotFound if none."""

    def download(self, uri: ParsedURI, sink: BinaryIO) -> None:
        """Stream one object's bytes into `sink` chunk by chunk (never all in memory)."""

    def upload(self, local: Path, uri: ParsedURI) -> None:
        """Store one local file at the URI."""


def child(uri: ParsedURI, relative: str) -> ParsedURI:
    """The URI of `relative` inside directory `uri`."""
    return ParsedURI(uri.scheme, uri.bucket, uri.key.rstrip("/") + "/" + relative)
