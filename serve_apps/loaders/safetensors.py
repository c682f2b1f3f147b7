"""format: safetensors — a state dict in safetensors plus the `module` class that it fits."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..spec import ModelSpec
from ._base import LoadError, refuse_pickle
from ._torch import TorchModel


def _model_class(spec: ModelSpec):
    module_name, _, class_name = (spec.module or "").partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"model {spec.name!r}: cannot import {module_name!r} ({exc}); is it installed on every node?") from None
    cls = module
    for part in class_name.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise LoadError(f"model {spec.name!r}: {module_name!r} has no {class_name!r}; check module: in the spec")
    return cls


def load(spec: ModelSpec, path: Path, device: str) -> TorchModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    refuse_pickle(path, "a safetensors file")
    net = _model_class(spec)()
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
