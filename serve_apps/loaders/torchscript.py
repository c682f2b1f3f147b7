"""format: torchscript — an archive from torch.jit.save (no Python class needed to load it)."""

from __future__ import annotations

from pathlib import Path

from ..spec import ModelSpec
from ._base import LoadError, refuse_pickle
from ._torch import TorchModel

ARTIFACT = "file"  # what load() is given: a file, a folder, or nothing


def load(spec: ModelSpec, path: Path, device: str) -> TorchModel:
    import torch

    refuse_pickle(path, "a TorchScript archive")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as exc:
        raise LoadError(
            f"model {spec.name!r}: {path} is not a TorchScript archive ({str(exc).splitlines()[0]})"
        ) from None
    return TorchModel(spec, module.eval(), device)
