"""modelfleet's version: pyproject.toml says it, the installed distribution's metadata carries it."""

from __future__ import annotations

from importlib import metadata

__all__ = ["VERSION"]

try:
    VERSION = metadata.version("modelfleet")
except metadata.PackageNotFoundError:  # a source tree used without `pip install -e .`
    VERSION = "0+unknown"
