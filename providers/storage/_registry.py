"""Scheme -> provider module, imported lazily so a missing SDK only matters when used.

A new scheme is one new module (exposing `Provider`) plus one line here.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

from ._errors import MissingExtra

if TYPE_CHECKING:
    from ._base import Provider

# scheme: (module, pip extra that brings its SDK, or None)
PROVIDERS: dict[str, tuple[str, str | None]] = {
    "file": ("providers.storage.file", None),
    "s3": ("providers.storage.s3", "s3"),
    "gs": ("providers.storage.gs", "gcs"),
    "az": ("providers.storage.az", "azure"),
    "http": ("providers.storage.http", None),
    "https": ("providers.storage.http", None),
}


@cache
def get_provider(scheme: str) -> Provider:
    module_name, extra = PROVIDERS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'modelfleet[{extra}]'" if extra else "reinstall modelfleet"
        raise MissingExtra(f"{scheme}://", f"the {scheme} provider needs {exc.name or exc}; {hint}") from None
    return module.Provider()
