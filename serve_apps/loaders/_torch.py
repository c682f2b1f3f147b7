"""Shared plumbing of the torch loaders: spec-ordered tensors in, spec-named arrays out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..spec import Datatype, ModelSpec
from ..tensors import NUMPY_DTYPES
from ._base import LoadError

__all__ = ["TorchModel"]


class TorchModel:
    """Calls `fn(*inputs_in_spec_order)` under inference mode on `device`.

    The callable may return a tensor, a tuple/list of tensors (in output
    order) or a dict keyed by output name.
    """

    def __init__(self, spec: ModelSpec, fn: Callable, device: str):
        import torch

        strings = [t.name for t in (*spec.inputs, *spec.outputs) if t.datatype is Datatype.BYTES]
        if strings:
            raise LoadError(
                f"model {spec.name!r}: torch models take and return numbers, but {strings} are BYTES; "
                "declare them as FP32/FP64/INT32/INT64/BOOL, or use format: sentence_transformers for text"
            )
        self._torch = torch
        self.spec, self.fn, self.device = spec, fn, torch.device(device)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])).to(self.device) for t in self.spec.inputs]
            result = self.fn(*args)
        if isinstance(result, dict):
            missing = [t.name for t in self.spec.outputs if t.name not in result]
            if missing:
                raise ValueError(
                    f"model {self.spec.name!r} returned keys {sorted(result)}, the spec also declares {missing}"
                )
            values = [result[t.name] for t in self.spec.outputs]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(self.spec.outputs):
            declared = len(self.spec.outputs)
            raise ValueError(f"model {self.spec.name!r} returned {len(values)} tensor(s), the spec declares {declared}")
        return {
            t.name: v.detach().cpu().numpy().astype(NUMPY_DTYPES[t.datatype], copy=False)
            for t, v in zip(self.spec.outputs, values, strict=False)
        }
