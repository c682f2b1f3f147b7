"""Example requests built from a model's declared inputs (for the printed curl lines and docs)."""

from __future__ import annotations

import math

from .spec import Datatype, ModelSpec, TensorSpec

__all__ = ["example_shape", "sample_v1", "sample_v2"]

_VALUES = {
    Datatype.BOOL: True,
    Datatype.INT32: 1,
    Datatype.INT64: 1,
    Datatype.FP32: 0.5,
    Datatype.FP64: 0.5,
    Datatype.BYTES: "hello world",
}


def example_shape(tensor: TensorSpec, rows: int) -> list[int]:
    """Batch dimension -> rows, other free dimensions -> 2."""
    return [rows] + [2 if d == -1 else d for d in tensor.shape[1:]]


def sample_v2(model: ModelSpec, rows: int = 1) -> dict:
    inputs = []
    for t in model.inputs:
        shape = example_shape(t, rows)
        inputs.append(
            {
                "name": t.name,
                "shape": shape,
                "datatype": t.datatype.value,
                "data": [_VALUES[t.datatype]] * math.prod(shape),
            }
        )
    return {"inputs": inputs}


def _nest(value, dims: list[int]):
    return value if not dims else [_nest(value, dims[1:]) for _ in range(dims[0])]


def sample_v1(model: ModelSpec, rows: int = 1) -> dict:
    if len(model.inputs) == 1:
        t = model.inputs[0]
        return {"instances": _nest(_VALUES[t.datatype], example_shape(t, rows))}
    return {
        "instances": [
            {t.name: _nest(_VALUES[t.datatype], example_shape(t, 1)[1:]) for t in model.inputs} for _ in range(rows)
        ]
    }
