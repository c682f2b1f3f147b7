"""Package exports resolved on first use, so importing one light module of a package never imports its heavy ones."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """`__all__` and a module `__getattr__` for `package`, whose `where` maps each submodule to the names it exports.

    In a package's __init__: `__all__, __getattr__ = lazy_exports(__name__, {"spec": ["ClusterSpec"], ...})`.
    """
    home = {name: module for module, names in where.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(home), __getattr__
