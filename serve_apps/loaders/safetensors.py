"""format: safetensors — a state dict in safetensors plus the `module` class that it fits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..spec import ModelSpec
from ._base import FormatTraits, LoadError, import_class, refuse_pickle

if TYPE_CHECKING:
    from ._torch import TorchModel

__all__ = ["TRAITS", "load", "resolve"]

TRAITS = FormatTraits(
    artifact="file",
    artifact_required=True,
    module="class",
    runtime=("torch", "safetensors.torch", "serve_apps.loaders._torch"),
)


def resolve(spec: ModelSpec) -> Any:
    """The class `module:` names, which the weights are loaded into (see `loaders.resolve_module`)."""
    return import_class(spec)


def _build(spec: ModelSpec, path: Path):
    import torch

    cls = resolve(spec)
    try:
        net = cls()
    except Exception as exc:  # whatever the user's constructor raises
        raise LoadError(
            f"model {spec.name!r}: {spec.module}() failed ({exc.__class__.__name__}: {exc}); "
            f"it must build with no arguments to receive the weights in {path}"
        ) from None
    if not isinstance(net, torch.nn.Module):
        raise LoadError(
            f"model {spec.name!r}: {spec.module} is not a torch.nn.Module, so it cannot take the weights in {path}"
        )
    return net


def load(spec: ModelSpec, path: Path, device: str) -> TorchModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ._torch import TorchModel  # here, not at import: reading TRAITS stays light (see _base)

    refuse_pickle(path, "a safetensors file")
    net = _build(spec, path)
    try:
        state = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise LoadError(f"model {spec.name!r}: {path} is not a valid safetensors file ({exc})") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise LoadError(
            f"model {spec.name!r}: the weights in {path} do not fit {spec.module} ({' '.join(first)}); "
            "is the artifact from this architecture?"
        ) from None
    net.eval().to(device)
    return TorchModel(spec, net, device)
