"""Model formats -> models with one `predict(inputs) -> outputs` method.

One module per format, found through `_FORMATS` and imported only when used
(so sentence-transformers loads only for the models that need it). A new
format is one module plus one line below.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..spec import ModelSpec
from ._base import LoadError, Model, pick_device, runs_inline

__all__ = ["LoadError", "Model", "known_formats", "load_model", "pick_device", "runs_inline"]

_FORMATS: dict[str, str] = {
    "safetensors": "serve_apps.loaders.safetensors",
    "torchscript": "serve_apps.loaders.torchscript",
    "torch_export": "serve_apps.loaders.torch_export",
    "sentence_transformers": "serve_apps.loaders.sentence_transformers",
    "builtin": "serve_apps.loaders.builtin",
    "python": "serve_apps.loaders.python",
}


def known_formats() -> list[str]:
    return sorted(_FORMATS)


def load_model(spec: ModelSpec, artifact_path: Path | None, device: str) -> Model:
    """Load `spec`'s model from its fetched artifact onto `device` ("cpu" or "cuda")."""
    module = importlib.import_module(_FORMATS[spec.format.value])
    _check_artifact(spec, artifact_path, module.ARTIFACT)
    return module.load(spec, artifact_path, device)


def _check_artifact(spec: ModelSpec, path: Path | None, kind: str | None) -> None:
    where = f"model {spec.name!r} (format {spec.format.value})"
    if kind is None:
        return
    if path is None:
        raise LoadError(f"{where} needs an artifact {kind}, got none; set artifact: {{uri: ...}} in the spec")
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{where}: artifact {path} does not exist; fetch it first or fix artifact.uri")
    if kind == "file" and not path.is_file():
        raise LoadError(f"{where} takes a single file, but {path} is a folder; point artifact.uri at the file")
    if kind == "folder" and not path.is_dir():
        raise LoadError(f"{where} takes a folder, but {path} is a file; end artifact.uri with '/' for a folder")
