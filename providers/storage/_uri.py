"""The one URI parser: scheme, bucket/container/host, key, and plain local paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ._errors import UnsupportedScheme
from ._registry import PROVIDERS


@dataclass(frozen=True)
class ParsedURI:
    scheme: str
    bucket: str  # bucket, container or host:port; empty for file
    key: str  # object key (no leading '/'), URL path for http, absolute path for file

    @property
    def is_dir(self) -> bool:
        return self.key.endswith("/")

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.key}"
        if self.scheme in ("http", "https"):
            return f"{self.scheme}://{self.bucket}{self.key}"
        return f"{self.scheme}://{self.bucket}/{self.key}"


def scheme_of(uri: str) -> str:
    """The provider scheme of a URI; plain paths are 'file'. Raises UnsupportedScheme."""
    if "://" not in uri:
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in PROVIDERS:
        known = ", ".join(f"{s}://" for s in sorted(PROVIDERS))
        raise UnsupportedScheme(uri, f"unknown scheme {scheme!r}; use one of {known} or a plain path")
    return scheme


def resolve_uri(uri: str, base_dir: Path | str | None = None) -> str:
    """Make plain paths absolute file:// URIs (relative to base_dir); leave other URIs alone."""
    if "://" in uri:
        return uri
    path = Path(uri).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    resolved = str(path.resolve())
    if uri.endswith("/") and not resolved.endswith("/"):
        resolved += "/"
    return f"file://{resolved}"


def parse_uri(uri: str) -> ParsedURI:
    scheme = scheme_of(uri)
    if scheme == "file":
        return ParsedURI("file", "", uri.removeprefix("file://"))
    parts = urlsplit(uri)
    if not parts.netloc:
        raise UnsupportedScheme(uri, f"{scheme}:// URIs need a {'host' if scheme.startswith('http') else 'bucket'}")
    if scheme in ("http", "https"):
        key = parts.path + (f"?{parts.query}" if parts.query else "")
        return ParsedURI(scheme, parts.netloc, key or "/")
    return ParsedURI(scheme, parts.netloc, parts.path.lstrip("/"))
