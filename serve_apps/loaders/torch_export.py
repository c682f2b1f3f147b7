"""format: torch_export — a `.pt2` program from torch.export.save."""

from __future__ import annotations

from pathlib import Path

from ..spec import ModelSpec
from ._base import LoadError
from ._torch import TorchModel


def load(spec: ModelSpec, path: Path, device: str) -> TorchModel:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises several unrelated types for a bad archive
        raise LoadError(f"model {spec.name!r}: {path} is not a torch.export program ({exc.__class__.__name__}: {exc})") from None
    module = program.module()
    if device != "cpu":
        module = module.to(device)
    return TorchModel(spec, module, device)
