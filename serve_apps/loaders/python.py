"""format: python — your own class, for logic that is not one tensor program (pre/post-processing, ensembles, rules).

`module: package.module:Class` is called as `Class(artifact_path, device)`
(`artifact_path` is None without an artifact) and must have
`predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]`. It runs
code from your installed packages, as `module:` of format safetensors does;
it never runs code from an artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec import ModelSpec
from ._base import FormatTraits, LoadError, import_class

__all__ = ["TRAITS", "load", "resolve"]

# The artifact is optional, a file or a folder: whatever the class reads. It is data, never code: the code is the
# installed module, trusted as any installed package is, so no sha256 pin is asked for.
TRAITS = FormatTraits(artifact="any", artifact_required=False, module="class")


def resolve(spec: ModelSpec) -> Any:
    """The class `module:` names (see `loaders.resolve_module`)."""
    return import_class(spec)


def load(spec: ModelSpec, path: Path | None, device: str):
    cls = resolve(spec)
    try:
        model = cls(path, device)
    except LoadError:
        raise
    except Exception as exc:  # whatever the user's constructor raises
        raise LoadError(
            f"model {spec.name!r}: {spec.module}(artifact_path, device) failed ({exc.__class__.__name__}: {exc})"
        ) from None
    if not callable(getattr(model, "predict", None)):
        raise LoadError(f"model {spec.name!r}: {spec.module} has no predict(inputs) method")
    return model
