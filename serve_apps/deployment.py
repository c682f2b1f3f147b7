"""The generic model deployment: fetch the artifact, load it, answer `infer` calls.

One class serves every model; the spec decides what it loads and how Ray
Serve scales and batches it. Batching is Ray's own `@serve.batch`, sized in
*rows* (not requests) so that one HTTP call carrying 20 rows and 20 calls
carrying one row each fill a batch alike.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from ray import serve

from providers.storage import fetch

from .loaders import load_model, pick_device
from .spec import ModelSpec
from .tensors import rows_of

__all__ = ["ModelDeployment"]

logger = logging.getLogger("ray.serve")


def _rows_in(items: list[dict[str, np.ndarray]]) -> int:
    return sum(rows_of(item) for item in items)


def _concat(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([item[name] for item in items]) for name in items[0]}


def _split(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    bounds = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(sizes))]


class ModelDeployment:
    """A replica of one model. Built from the model's spec as a plain dict (it crosses processes)."""

    def __init__(self, model_spec: dict):
        self.spec = ModelSpec.model_validate(model_spec)
        started = time.perf_counter()
        path = None
        if self.spec.artifact is not None:
            path = fetch(self.spec.artifact.uri, sha256=self.spec.artifact.sha256)
        device = pick_device(self.spec.resources.num_gpus)
        self.model = load_model(self.spec, path, device)
        batching = self.spec.batching
        if batching is not None:
            self._batched.set_max_batch_size(batching.max_batch_size)
            self._batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        logger.info(
            "model %s v%s loaded on %s in %.2fs", self.spec.name, self.spec.version, device, time.perf_counter() - started
        )

    async def infer(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """(outputs, rows in the batch that served them): the second makes batching observable."""
        batching = self.spec.batching
        if batching is None or rows_of(inputs) > batching.max_batch_size:
            # Unbatched, or too big to share a batch: it is a batch on its own.
            return await asyncio.to_thread(self.model.predict, inputs), rows_of(inputs)
        return await self._batched(inputs)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, batch_size_fn=_rows_in)
    async def _batched(self, items: list[dict[str, np.ndarray]]) -> list[tuple[dict[str, np.ndarray], int]]:
        sizes = [rows_of(item) for item in items]
        outputs = await asyncio.to_thread(self.model.predict, _concat(items))
        return [(part, sum(sizes)) for part in _split(outputs, sizes)]

    def ready(self) -> dict:
        return {"name": self.spec.name, "version": self.spec.version}
