"""App spec -> Ray Serve application.

The spec half imports without Ray, so `modelfleet validate` stays instant;
the serving half (`build_app`, `LocalServer`) imports Ray on first use.
"""

from __future__ import annotations

from typing import Any

from .spec import AppSpec, ModelSpec, SpecError, check_artifacts_exist, load_app_spec

__all__ = [
    "AppSpec",
    "LocalServer",
    "ModelSpec",
    "SpecError",
    "build_app",
    "check_artifacts_exist",
    "load_app_spec",
    "serve_config",
]

_LAZY = {"build_app": "serve_apps.build", "serve_config": "serve_apps.build", "LocalServer": "serve_apps.runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'serve_apps' has no attribute {name!r}")
