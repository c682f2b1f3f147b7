"""format: torchscript — an archive from torch.jit.save (no Python class needed to load it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..spec import ModelSpec
from ._base import FormatTraits, LoadError, refuse_pickle

if TYPE_CHECKING:
    from ._torch import TorchModel

__all__ = ["TRAITS", "load"]

TRAITS = FormatTraits(
    artifact="file",
    artifact_required=True,
    program="a TorchScript program",
    runtime=("torch", "serve_apps.loaders._torch"),
)


def load(spec: ModelSpec, path: Path, device: str) -> TorchModel:
    import torch

    from ._torch import TorchModel  # here, not at import: reading TRAITS stays light (see _base)

    refuse_pickle(path, "a TorchScript archive")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as exc:
        raise LoadError(
            f"model {spec.name!r}: {path} is not a TorchScript archive ({str(exc).splitlines()[0]})"
        ) from None
    return TorchModel(spec, module.eval(), device)
