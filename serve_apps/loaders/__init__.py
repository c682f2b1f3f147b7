"""Model formats -> models with one `predict(inputs) -> outputs` method.

One module per format, found through `_FORMATS` and imported only when used
(so sentence-transformers loads only for the models that need it). Each
declares what it needs from a spec in `TRAITS`, which `traits()` reads
for the spec's checks, the loaders' and the tuner's. A format whose `module:`
names something (a class, a builtin) finds it with its `resolve(spec)`, which
`resolve_module` calls for the check before Ray starts. A new format is one
module plus one line below (and its value in `ModelFormat`).

This package imports nothing heavy and not the spec, because the spec
imports it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._base import CONVERSION_HINT, PICKLE_HINT, FormatTraits, LoadError, Model, ModuleError, pick_device, runs_inline

if TYPE_CHECKING:
    from ..spec import ModelSpec

__all__ = [
    "CONVERSION_HINT",
    "PICKLE_HINT",
    "FormatTraits",
    "LoadError",
    "Model",
    "ModuleError",
    "import_runtime",
    "known_formats",
    "load_model",
    "pick_device",
    "refusal",
    "resolve_module",
    "runs_inline",
    "traits",
]

_FORMATS: dict[str, str] = {
    "safetensors": "serve_apps.loaders.safetensors",
    "torchscript": "serve_apps.loaders.torchscript",
    "torch_export": "serve_apps.loaders.torch_export",
    "sentence_transformers": "serve_apps.loaders.sentence_transformers",
    "builtin": "serve_apps.loaders.builtin",
    "python": "serve_apps.loaders.python",
}

# Formats without a loader. A pipeline loads nothing: it calls the app's other models over handles
# (serve_apps/pipeline.py), each in a deployment a handle can reach, so it needs one of its own too.
_WITHOUT_LOADER: dict[str, FormatTraits] = {
    "pipeline": FormatTraits(artifact="none", artifact_required=False, calls_models=True, may_embed=False)
}

# Formats people try first and that we refuse on purpose: unpickling runs code.
_REFUSED: dict[str, str] = {
    "pickle": "pickle runs arbitrary code when loaded",
    "pkl": "pickle runs arbitrary code when loaded",
    "joblib": "joblib files are pickles and run arbitrary code when loaded",
    "torch": "a torch.save() pickle runs arbitrary code when loaded",
    "pt": "a torch.save() pickle runs arbitrary code when loaded",
}


def known_formats() -> list[str]:
    """The formats with a loader."""
    return sorted(_FORMATS)


def traits(format_name: str) -> FormatTraits:
    """What format `format_name` needs from a spec (KeyError for a name that is no format)."""
    if format_name in _WITHOUT_LOADER:
        return _WITHOUT_LOADER[format_name]
    return importlib.import_module(_FORMATS[format_name]).TRAITS


def refusal(format_name: str) -> str | None:
    """Why `format_name` is refused on purpose and how to convert such a model; None when it is not."""
    why = _REFUSED.get(format_name.lower())
    return None if why is None else f"format {format_name!r} is refused: {why}; {CONVERSION_HINT}"


def resolve_module(spec: ModelSpec) -> Any:
    """What `spec.module` names, found as the format's loader finds it (its `resolve`); None for a format naming none.

    ModuleError (a LoadError) says what is wrong. The spec check (`check_modules_resolve`, before Ray starts) comes
    here, and a replica's `load` calls the same `resolve`, so both say the same.
    """
    if not traits(spec.format.value).needs_module:
        return None
    return importlib.import_module(_FORMATS[spec.format.value]).resolve(spec)


def import_runtime(spec: ModelSpec) -> None:
    """Import the libraries `spec`'s format loads with (its `TRAITS.runtime`) and its module, ahead of loading (in a
    replica: a standby)."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"  # as the sentence_transformers loader sets it: a replica never reaches a hub
    for name in traits(spec.format.value).runtime:
        importlib.import_module(name)
    resolve_module(spec)


def load_model(spec: ModelSpec, artifact_path: Path | None, device: str) -> Model:
    """Load `spec`'s model from its fetched artifact onto `device` ("cpu" or "cuda")."""
    module = importlib.import_module(_FORMATS[spec.format.value])
    _check_artifact(spec, artifact_path, module.TRAITS)
    return module.load(spec, artifact_path, device)


def _check_artifact(spec: ModelSpec, path: Path | None, needs: FormatTraits) -> None:
    if not needs.artifact_required:
        return  # none, or an optional one that is whatever the model's own code reads (format: python)
    where = f"model {spec.name!r} (format {spec.format.value})"
    if path is None:
        raise LoadError(f"{where} needs an artifact {needs.artifact}, got none; set artifact: {{uri: ...}} in the spec")
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{where}: artifact {path} does not exist; fetch it first or fix artifact.uri")
    if needs.artifact == "file" and not path.is_file():
        raise LoadError(f"{where} takes a single file, but {path} is a folder; point artifact.uri at the file")
    if needs.artifact == "folder" and not path.is_dir():
        raise LoadError(f"{where} takes a folder, but {path} is a file; end artifact.uri with '/' for a folder")
