"""What the registry's stores share: their one error, and who and when a write is."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime

__all__ = ["RegistryError", "_actor", "_now"]


class RegistryError(Exception):
    """A request the registry refuses (an unknown model, version or alias; a version still in use): one line."""


def _actor() -> str:
    """Who writes, when the caller does not say: the OS user (never a secret)."""
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container)
        return f"uid:{os.getuid()}"


def _now() -> datetime:
    return datetime.now(UTC)
