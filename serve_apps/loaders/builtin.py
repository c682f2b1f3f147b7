"""format: builtin — models that need no artifact (e.g. `echo`, to measure serving overhead)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

from ..spec import ModelSpec
from ._base import FormatTraits, LoadError, ModuleError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BUILTINS", "TRAITS", "Echo", "load", "resolve"]

TRAITS = FormatTraits(artifact="none", artifact_required=False, module="builtin")


class Echo:
    """Returns input i as output i: the cheapest possible model."""

    inline = True  # a thread hop would cost more than the copy-free cast

    def __init__(self, spec: ModelSpec):
        from ..tensors import NUMPY_DTYPES  # here, not at import: reading TRAITS stays light (see _base)

        self.pairs = [
            (i.name, o.name, NUMPY_DTYPES[o.datatype]) for i, o in zip(spec.inputs, spec.outputs, strict=False)
        ]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {out: inputs[inp].astype(dtype, copy=False) for inp, out, dtype in self.pairs}


BUILTINS = {"echo": Echo}


def resolve(spec: ModelSpec) -> type[Echo]:
    """The builtin `module:` names (see `loaders.resolve_module`)."""
    factory = BUILTINS.get(spec.module or "")
    if factory is None:
        close = difflib.get_close_matches(spec.module or "", BUILTINS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ModuleError(spec.name, f"unknown builtin {spec.module!r}; known: {sorted(BUILTINS)}{hint}")
    return factory


def load(spec: ModelSpec, path: Path | None, device: str):
    factory = resolve(spec)
    if spec.module == "echo" and len(spec.inputs) != len(spec.outputs):
        raise LoadError(f"model {spec.name!r}: echo needs as many outputs as inputs")
    return factory(spec)
