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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram
from ray import serve

from providers.storage import ArtifactNotFound, fetch

from ._replica_console import keep_serve_internals_off_the_console
from .batching import RowBatcher
from .coalescing import ManyRequests
from .eviction import multiplexed
from .loaders import Model, load_model, pick_device, runs_inline
from .monitor import ReplicaMetrics
from .request_error import RequestError
from .spec import ModelSpec
from .tensors import rows_of

__all__ = ["LATENCY_BUCKETS", "ModelDeployment"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

logger = logging.getLogger("ray.serve")


def _concat(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([item[name] for item in items]) for name in items[0]}


def _split(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    bounds = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(sizes))]


async def _predict(model: Model, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """(outputs, seconds the model took). In a worker thread, so a slow model never blocks the replica's event loop;
    inline when cheaper than the hop."""
    started = time.perf_counter()
    if runs_inline(model):
        outputs = model.predict(inputs)
    else:
        outputs = await asyncio.to_thread(model.predict, inputs)
    return outputs, time.perf_counter() - started


class _Loaded:
    """A multiplexed model, which says when Serve evicts it (Serve calls `__del__` on eviction)."""

    def __init__(self, model: Model, model_id: str, loaded: set[str], evicted: Counter):
        self.model, self.model_id, self._loaded, self._evicted = model, model_id, loaded, evicted
        loaded.add(model_id)

    def __del__(self) -> None:
        self._loaded.discard(self.model_id)
        self._evicted.inc()


class _ModelMetrics(ReplicaMetrics):
    """What a model replica counts (pushed to the app's monitor, monitor.py; docs/metrics.md)."""

    def __init__(self, spec: ModelSpec, requests: Callable[[], float], loaded: Callable[[], float]) -> None:
        super().__init__(f"model:{spec.name}@{spec.version}")
        labels = {"model": spec.name, "version": spec.version}

        def histogram(name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
            return Histogram(name, doc, list(labels), registry=self.registry, buckets=buckets).labels(**labels)

        self.model_latency = histogram(
            "modelfleet_model_latency_seconds", "Time the model took per call (a batch, or a request unbatched)."
        )
        self.queue_latency = histogram(
            "modelfleet_queue_latency_seconds",
            "Time a request waited in the model's replica before its batch ran (arrival to the model's start).",
        )
        self.load = histogram(
            "modelfleet_model_load_seconds",
            "Time to fetch and load a model (a replica's start, or a multiplexed model's first use).",
            LOAD_BUCKETS,
        )
        self.evictions = Counter(
            "modelfleet_multiplexed_evictions",
            "Multiplexed models unloaded from a replica to make room for another.",
            list(labels),
            registry=self.registry,
        ).labels(**labels)
        gauge = Gauge(
            "modelfleet_multiplexed_models_loaded",
            "Multiplexed models loaded in the model's replicas.",
            list(labels),
            registry=self.registry,
        )
        gauge.labels(**labels).set_function(loaded)
        Gauge(
            "modelfleet_replica_requests",
            "Requests in the model's replicas, running or waiting: what Serve's autoscaler scales on.",
            list(labels),
            registry=self.registry,
        ).labels(**labels).set_function(requests)


class ModelDeployment(ManyRequests):
    """A replica of one model (or one multiplexed family). Built from the model's spec as a plain dict; `local_door`:
    also answer callers on this node over the local hop (local_hop.py; not for a family, whose ids Serve routes)."""

    def __init__(self, model_spec: dict, local_door: bool = False):
        keep_serve_internals_off_the_console()
        self.spec = ModelSpec.model_validate(model_spec)
        self._loaded: set[str] = set()
        self.meters = _ModelMetrics(self.spec, lambda: self._requests, lambda: len(self._loaded))
        self.meters.start_pushing()
        self.device = pick_device(self.spec.resources.num_gpus)
        batching = self.spec.batching
        self._batcher: RowBatcher[dict[str, np.ndarray], tuple[dict[str, np.ndarray], int, float]] | None = None
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

        async def load_variant(model_id: str) -> _Loaded:
            model = await asyncio.to_thread(self._load, model_id)
            return _Loaded(model, model_id, self._loaded, self.meters.evictions)

        self._variant = multiplexed(
            load_variant, self.spec.multiplex.max_models_per_replica, self.spec.multiplex.eviction
        )

    def __del__(self) -> Awaitable[Any] | None:
        """Serve awaits this when it stops the replica: the local door's drain, and the last push of its metrics."""
        door = super().__del__()
        meters = getattr(self, "meters", None)  # absent when the constructor failed early
        goodbye = meters.goodbye_soon() if meters is not None else None
        if goodbye is None or door is None:
            return door or goodbye
        return asyncio.gather(door, goodbye)  # (a loop runs: goodbye is a task of it)

    def _load(self, model_id: str | None) -> Model:
        started = time.perf_counter()
        path = self._paths.get(model_id) if model_id else None
        if path is None and self.spec.artifact is not None:
            path = fetch(self.spec.artifact_uri(model_id), sha256=self.spec.artifact.sha256)
        model = load_model(self.spec, path, self.device)
        label = f"{self.spec.name}:{model_id}" if model_id else self.spec.name
        seconds = time.perf_counter() - started
        self.meters.load.observe(seconds)
        logger.info("model %s v%s loaded on %s in %.3fs", label, self.spec.version, self.device, seconds)
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
        arrived = time.perf_counter()
        rows = rows_of(inputs)
        if self._batcher is None or rows > self._batcher.max_rows:
            # Unbatched, or too big to share a batch: it is a batch on its own.
            model = await self._model()
            async with self._slots:
                outputs, model_s = await _predict(model, inputs)
            self.meters.model_latency.observe(model_s)
        else:
            model_id = serve.get_multiplexed_model_id() if self.spec.multiplex is not None else None
            outputs, rows, model_s = await self._batcher.submit(model_id, inputs, rows)
        self.meters.queue_latency.observe(max(0.0, time.perf_counter() - arrived - model_s))
        return outputs, rows

    async def _run_batch(
        self, model_id: str | None, items: list[dict[str, np.ndarray]]
    ) -> list[tuple[dict[str, np.ndarray], int, float]]:
        sizes = [rows_of(item) for item in items]
        model = await self._model(model_id)
        outputs, model_s = await _predict(model, _concat(items) if len(items) > 1 else items[0])
        self.meters.model_latency.observe(model_s)
        return [(part, sum(sizes), model_s) for part in _split(outputs, sizes)]

    def loaded_models(self) -> list[str]:
        """Ids of a multiplexed family loaded in this replica right now (a handle method, for operators and tests)."""
        return sorted(self._loaded) if self.spec.multiplex is not None else []

    def ready(self) -> dict:
        return {"name": self.spec.name, "version": self.spec.version}
