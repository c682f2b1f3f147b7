"""format: safetensors — a state dict in safetensors plus the `module` class that it fits."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..spec import ModelSpec
from ._base import LoadError, refuse_pickle
from ._torch import TorchModel

ARTIFACT = "file"  # what load() is given: a file, a folder, or nothing


def _model_class(spec: ModelSpec, path: Path):
    module_name, _, class_name = (spec.module or "").partition(":")
    for_weights = f"the class for the weights in {path}"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module's own top level raises
        raise LoadError(
            f"model {spec.name!r}: cannot import {module_name!r}, {for_weights} ({exc.__class__.__name__}: {exc}); "
            "is it installed on every node?"
        ) from None
    cls = module
    for part in class_name.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise LoadError(
                f"model {spec.name!r}: {module_name!r} has no {class_name!r}, {for_weights}; check module: in the spec"
            )
    return cls


def _build(spec: ModelSpec, path: Path):
    import torch

    cls = _model_class(spec, path)
    try:
        net = cls()
    except Exception as exc:  # whatever the user's constructor raises
        raise LoadError(
            f"model {spec.name!r}: {spec.module}() failed ({exc.__class__.__name__}: {exc}); "
            f"it must build with no arguments to receive the weights in {path}"
        ) from None
    if not isinstance(net, torch.nn.Module):
        raise LoadError(f"model {spec.name!r}: {spec.module} is not a torch.nn.Module, so it cannot take the weights in {path}")
    return net


def load(spec: ModelSpec, path: Path, device: str) -> TorchModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
