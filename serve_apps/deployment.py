"""The generic model deployment: fetch the artifact, load it, answer `infer` calls.

One class serves every model; the spec decides what it loads and how Ray
Serve scales and batches it. Batching (batching.py) is sized in *rows* (not
requests) so that one HTTP call carrying 20 rows and 20 calls carrying one row
each fill a batch alike, and forms each batch when the model is free, from all
that waits (Ray's `@serve.batch` forms the next batch while the last one runs,
and under load its batches stayed small).

A multiplexed family (`multiplex:`) is Ray's own `@serve.multiplexed`: each
request carries a model id, a replica loads that id's artifact on first use
and unloads one beyond `max_models_per_replica` (the least asked for lately:
eviction.py); Serve routes an id to a replica that already has it. A batch
holds one id.

Callers send requests one by one (`infer`) or several in one handle call (`infer_many`, what the ingress's
coalescer sends, over a handle or the local hop); either way each is one of the requests this replica reports to the
autoscaler (coalescing.ManyRequests, autoscaling_policy.py), so Serve scales on requests, not calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from ray import serve

from providers.storage import ArtifactNotFound, fetch

from ._replica_console import keep_serve_internals_off_the_console
from .batching import RowBatcher
from .coalescing import ManyRequests
from .eviction import multiplexed
from .loaders import Model, load_model, pick_device, runs_inline
from .request_error import RequestError
from .spec import ModelSpec
from .tensors import rows_of

__all__ = ["ModelDeployment"]

logger = logging.getLogger("ray.serve")


def _concat(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([item[name] for item in items]) for name in items[0]}


def _split(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    bounds = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(sizes))]


async def _predict(model: Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """In a worker thread, so a slow model never blocks the replica's event loop; inline when cheaper than the hop."""
    if runs_inline(model):
        return model.predict(inputs)
    return await asyncio.to_thread(model.predict, inputs)


class _Loaded:
    """A multiplexed model, which says when Serve evicts it (Serve calls `__del__` on eviction)."""

    def __init__(self, model: Model, model_id: str, loaded: set[str]):
        self.model, self.model_id, self._loaded = model, model_id, loaded
        loaded.add(model_id)

    def __del__(self) -> None:
        self._loaded.discard(self.model_id)


class ModelDeployment(ManyRequests):
    """A replica of one model (or one multiplexed family). Built from the model's spec as a plain dict; `local_door`:
    also answer callers on this node over the local hop (local_hop.py; not for a family, whose ids Serve routes)."""

    def __init__(self, model_spec: dict, local_door: bool = False):
        keep_serve_internals_off_the_console()
        self.spec = ModelSpec.model_validate(model_spec)
        self.device = pick_device(self.spec.resources.num_gpus)
        batching = self.spec.batching
        self._batcher: RowBatcher[dict[str, np.ndarray], tuple[dict[str, np.ndarray], int]] | None = None
        if batching is not None:
            self._batcher = RowBatcher(self._run_batch, batching.max_batch_size, batching.batch_wait_timeout_s)
        self.name = self.spec.name
        # An unbatched model runs at most max_ongoing_requests requests at once, however they came (one per call,
        # or many in one coalesced call), as Serve would admit them one per call.
        self._slots = asyncio.Semaphore(self.spec.max_ongoing_requests)
        self.model: Model | None = None
        if self.spec.multiplex is None:
            self.model = self._load(None)
            if local_door:
                self._open_local_door()
            return
        self._paths: dict[str, Path] = {}  # model id -> fetched artifact (ids are few: the family's size)
        self._loaded: set[str] = set()

        async def load_variant(model_id: str) -> _Loaded:
            return _Loaded(await asyncio.to_thread(self._load, model_id), model_id, self._loaded)

        self._variant = multiplexed(
            load_variant, self.spec.multiplex.max_models_per_replica, self.spec.multiplex.eviction
        )

    def _load(self, model_id: str | None) -> Model:
        started = time.perf_counter()
        path = self._paths.get(model_id) if model_id else None
        if path is None and self.spec.artifact is not None:
            path = fetch(self.spec.artifact_uri(model_id), sha256=self.spec.artifact.sha256)
        model = load_model(self.spec, path, self.device)
        label = f"{self.spec.name}:{model_id}" if model_id else self.spec.name
        logger.info(
            "model %s v%s loaded on %s in %.3fs", label, self.spec.version, self.device, time.perf_counter() - started
        )
        return model

    async def _model(self, model_id: str | None = None) -> Model:
        """The model, or for a family the one with `model_id` (by default, the request's)."""
        if self.model is not None:  # not a family: loaded with the replica
            return self.model
        model_id = model_id or serve.get_multiplexed_model_id()
        if model_id not in self._paths:
            # Fetch before asking Serve to load: at capacity Serve evicts first, and an unknown id must cost nothing.
            try:
                self._paths[model_id] = await asyncio.to_thread(fetch, self.spec.artifact_uri(model_id))
            except ArtifactNotFound:
                logger.info("model %s has no id %r (%s)", self.spec.name, model_id, self.spec.artifact_uri(model_id))
                raise RequestError(404, f"model {self.spec.name!r} has no model id {model_id!r}") from None
        return (await self._variant(model_id)).model

    async def _infer(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """(outputs, rows in the batch that served them): the second makes batching observable."""
        rows = rows_of(inputs)
        if self._batcher is None or rows > self._batcher.max_rows:
            # Unbatched, or too big to share a batch: it is a batch on its own.
            model = await self._model()
            async with self._slots:
                return await _predict(model, inputs), rows
        model_id = serve.get_multiplexed_model_id() if self.spec.multiplex is not None else None
        return await self._batcher.submit(model_id, inputs, rows)

    async def _run_batch(
        self, model_id: str | None, items: list[dict[str, np.ndarray]]
    ) -> list[tuple[dict[str, np.ndarray], int]]:
        sizes = [rows_of(item) for item in items]
        model = await self._model(model_id)
        outputs = await _predict(model, _concat(items) if len(items) > 1 else items[0])
        return [(part, sum(sizes)) for part in _split(outputs, sizes)]

    def loaded_models(self) -> list[str]:
        """Ids of a multiplexed family loaded in this replica right now (a handle method, for operators and tests)."""
        return sorted(self._loaded) if self.spec.multiplex is not None else []

    def ready(self) -> dict:
        return {"name": self.spec.name, "version": self.spec.version}
