"""Reading an app spec file (through groundwork's `load_spec_file`), and checking its local artifacts exist."""

from __future__ import annotations

from pathlib import Path

from groundwork.specs import SpecError, load_spec_file
from providers.storage import resolve_uri, scheme_of

from .spec import AppSpec

__all__ = ["SpecError", "check_artifacts_exist", "load_app_spec"]


def load_app_spec(path: str | Path) -> AppSpec:
    """Read and validate an app spec; raise SpecError with one clear line on any problem."""
    spec = load_spec_file(path, AppSpec, "an app spec", "examples/echo/app.yaml", "modelfleet schema")
    spec._base_dir = Path(path).resolve().parent
    return spec


def check_artifacts_exist(spec: AppSpec, path: Path | str) -> None:
    """Local artifacts must exist at validate time; remote ones are checked when fetched."""
    for i, model in enumerate(spec.models):
        if model.artifact is None or scheme_of(model.artifact.uri) != "file":
            continue
        if model.multiplex is not None and model.multiplex.example_id is None:
            continue  # a family's ids are only known at request time
        uri = model.artifact_uri(model.multiplex.example_id if model.multiplex else None)
        local = Path(resolve_uri(uri, spec.base_dir).removeprefix("file://"))
        if not local.exists():
            hint = "run the example's train.py first, or fix the path (plain paths are relative to the spec's folder)"
            raise SpecError(path, f"models[{i}:{model.name}].artifact.uri", f"{local} does not exist; {hint}")
