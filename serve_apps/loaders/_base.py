"""What every loader returns, and the errors they raise."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..spec import ModelSpec

__all__ = ["LoadError", "Model", "import_class", "pick_device", "refuse_pickle", "runs_inline"]

PICKLE_HINT = (
    "unpickling runs arbitrary code, so modelfleet never loads pickles; convert the model once where you trust it: "
    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors') (format: safetensors, module: pkg.mod:Class) "
    "or torch.jit.save(torch.jit.script(model), 'model.pt') (format: torchscript)"
)


class Model(Protocol):
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One array per declared input (batch first) -> one array per declared output."""


def runs_inline(model: Model) -> bool:
    """Whether `predict` is cheaper than the thread hop that keeps a slow one off the event loop.

    A model class says so with `inline = True` (the builtins do); every other
    model's predict runs in a worker thread.
    """
    return bool(getattr(model, "inline", False))


class LoadError(Exception):
    """A model that cannot be loaded; the message says what and how to fix it."""


def pick_device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def import_class(spec: ModelSpec, what: str):
    """`spec.module` ('package.module:Class') imported; LoadError saying what is wrong otherwise."""
    module_name, _, class_name = (spec.module or "").partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module's own top level raises
        raise LoadError(
            f"model {spec.name!r}: cannot import {module_name!r}, {what} ({exc.__class__.__name__}: {exc}); "
            "is it installed on every node?"
        ) from None
    cls = module
    for part in class_name.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise LoadError(
                f"model {spec.name!r}: {module_name!r} has no {class_name!r}, {what}; check module: in the spec"
            )
    return cls


def refuse_pickle(path, expected: str) -> None:
    """Raise LoadError if `path` holds a pickle (or a torch.save zip) instead of `expected`."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":
        raise LoadError(f"{path} is a pickle, not {expected}: {PICKLE_HINT}")
    if head == b"PK" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        # TorchScript archives hold data.pkl too, read by TorchScript's own restricted unpickler;
        # what marks them is their compiled code and constants.pkl.
        torchscript = any(n.endswith("constants.pkl") for n in names) and any("code/" in n for n in names)
        if any(n.endswith("data.pkl") for n in names) and not torchscript:
            raise LoadError(f"{path} is a torch.save() pickle archive, not {expected}: {PICKLE_HINT}")
