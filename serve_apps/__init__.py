"""App spec -> Ray Serve application.

The spec half imports without Ray, so `modelfleet validate` stays instant;
the serving half (`build_app`, `serve_config`, `LocalServer`, `connect`) imports Ray on first use.
"""

from __future__ import annotations

from groundwork.lazy import lazy_exports

from .spec import AppSpec, ModelSpec, SpecError, check_artifacts_exist, check_modules_resolve, load_app_spec

__all__ = [
    "AppSpec",
    "LocalServer",
    "ModelSpec",
    "SpecError",
    "build_app",
    "check_artifacts_exist",
    "check_modules_resolve",
    "connect",
    "load_app_spec",
    "serve_config",
]
_, __getattr__ = lazy_exports(
    __name__, {"build": ["build_app", "serve_config"], "deploy": ["connect"], "local_server": ["LocalServer"]}
)
