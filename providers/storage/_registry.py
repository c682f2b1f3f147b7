"""Scheme -> provider module, imported lazily so a missing SDK only matters when used.

A new scheme is one new module plus one line here.
"""

from __future__ import annotations

# scheme: (module, pip extra that brings its SDK, or None)
PROVIDERS: dict[str, tuple[str, str | None]] = {
    "file": ("providers.storage.file", None),
    "s3": ("providers.storage.s3", "s3"),
    "gs": ("providers.storage.gs", "gcs"),
    "az": ("providers.storage.az", "azure"),
    "http": ("providers.storage.http", None),
    "https": ("providers.storage.http", None),
}
