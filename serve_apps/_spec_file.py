"""Reading an app spec file (through groundwork's `load_spec_file`), and checking, before Ray starts, what the
replicas would otherwise find out: that local artifacts exist and that `module:` names something that loads."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from groundwork.specs import SpecError, load_spec_file
from providers.storage import resolve_uri, scheme_of

from .loaders import ModuleError, resolve_module
from .spec import AppSpec

__all__ = ["SpecError", "check_artifacts_exist", "check_modules_resolve", "load_app_spec"]


def load_app_spec(path: str | Path) -> AppSpec:
    """Read and validate an app spec; raise SpecError with one clear line on any problem."""
    spec = load_spec_file(path, AppSpec, "an app spec", "examples/echo/app.yaml", "modelfleet schema")
    spec._base_dir = Path(path).resolve().parent
    return spec


def check_artifacts_exist(spec: AppSpec, path: Path | str) -> None:
    """Local artifacts must exist at validate time; remote ones are checked when fetched."""
    for where, model, artifact, candidate in spec.artifacts():
        if artifact.registry_ref or scheme_of(artifact.uri) != "file":
            continue
        if model.multiplex is not None and model.multiplex.example_id is None:
            continue  # a family's ids are only known at request time
        uri = (
            model.artifact_uri(model.multiplex.example_id if model.multiplex else None)
            if candidate is None
            else (artifact.uri)
        )
        local = Path(resolve_uri(uri, spec.base_dir).removeprefix("file://"))
        if not local.exists():
            hint = "run the example's train.py first, or fix the path (plain paths are relative to the spec's folder)"
            raise SpecError(path, f"{where}.uri", f"{local} does not exist; {hint}")


@contextmanager
def _as_replicas_import() -> Iterator[None]:
    """Ray puts the driver's working directory first on its workers' sys.path (ray.init's py_driver_sys_path), so a
    replica finds `examples.digits.model` under the directory `modelfleet run` or `deploy` started in: so do we."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # modules written since the last import are found too
    try:
        yield
    finally:
        with suppress(ValueError):  # unless a model's module took it out itself
            sys.path.remove(cwd)  # the first occurrence: ours


def check_modules_resolve(spec: AppSpec, path: Path | str) -> None:
    """Every `module:` imports and names what its format loads, as a replica would find it; SpecError otherwise.

    It imports the models' modules (code the spec's author trusts, see SECURITY.md), so load_app_spec leaves it
    out and stays light. Replicas load through the same `loaders.resolve_module`, so both say the same.
    """
    with _as_replicas_import():
        for i, model in enumerate(spec.models):
            versions = [("", model)] + [
                (f".candidates[{j}]", model.candidate_spec(c)) for j, c in enumerate(model.candidates) if c.module
            ]
            for where, version in versions:
                try:
                    resolve_module(version)
                except ModuleError as exc:
                    raise SpecError(path, f"models[{i}:{model.name}]{where}.module", exc.problem) from None
