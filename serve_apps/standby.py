"""Warm standby replicas: a scaled-to-zero model's first answer in milliseconds, while its own replica starts.

From no replica, Ray Serve answers a model's first request after its autoscaler decided, a new actor process
started and imported Python, Ray and torch: about 3 s for digits on this machine, of which fetching and loading
the model is 10 ms (BENCHMARKS.md, "Cold start"). A standby replica has done all of that already: it started with
the app, imported every scaled-to-zero model's libraries (torch, sentence-transformers: seconds) and code, and
fetched their artifacts. When the ingress has a request for such a model and the model has no running replica, it
sends the request here (and wakes the model's own deployment, which Serve then starts as before); the standby loads
the model on its first request, answers, and keeps it for later ones until it has been idle `idle_s` (or
`max_models` others were used since), then drops it, so the memory goes back. The model's own deployment keeps its
meaning: `min_replicas: 0` still holds no replica of its own while idle, and once its replica runs, the ingress
sends it the traffic again.

Requests reach the standby through the same coalesced hop as any model (coalescing.py), with the model's name as the
multiplexed model id, so Serve routes a model's requests to the standby replica that already holds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from ray import serve

from providers.storage import fetch

from ._replica_console import keep_serve_internals_off_the_console
from .coalescing import ManyRequests
from .deployment import ModelDeployment
from .loaders import import_runtime
from .request_error import RequestError
from .spec import ModelSpec, StandbySpec

__all__ = ["StandbyDeployment"]

logger = logging.getLogger("ray.serve")


class StandbyDeployment(ManyRequests):
    """One standby replica of an app. `models`: the specs (as dicts) of the models it may answer for."""

    name = "standby"

    def __init__(self, models: dict[str, dict], standby: dict):
        keep_serve_internals_off_the_console()
        self.specs = {name: ModelSpec.model_validate(spec) for name, spec in models.items()}
        self.config = StandbySpec.model_validate(standby)
        self._held: OrderedDict[str, tuple[ModelDeployment, float]] = OrderedDict()  # least recently used first
        self._loading: dict[str, asyncio.Task[ModelDeployment]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        for spec in self.specs.values():  # what a cold start would otherwise pay: imports and the download
            import_runtime(spec)
            if spec.artifact is not None:
                fetch(spec.artifact_uri(None), sha256=spec.artifact.sha256)

    async def _infer(self, inputs: Any) -> Any:
        model = await self._adopt(serve.get_multiplexed_model_id())
        return await model.infer(inputs)

    async def _adopt(self, name: str) -> ModelDeployment:
        """The model named `name`, loaded on its first request (once, however many requests wait for it)."""
        if name in self._held:
            model, _ = self._held.pop(name)
            self._held[name] = (model, time.monotonic())
            return model
        if name not in self.specs:
            raise RequestError(404, f"no model {name!r} has a standby here")
        if name not in self._loading:
            self._loading[name] = asyncio.create_task(self._load(name))
        return await asyncio.shield(self._loading[name])

    async def _load(self, name: str) -> ModelDeployment:
        try:
            model = await asyncio.to_thread(ModelDeployment, self.specs[name].model_dump(mode="json"))
        finally:
            self._loading.pop(name, None)
        self._held[name] = (model, time.monotonic())
        while len(self._held) > self.config.max_models:
            dropped, _ = self._held.popitem(last=False)
            logger.info("standby dropped model %s (max_models %d)", dropped, self.config.max_models)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._drop_idle(), name="standby-sweeper")
        return model

    async def _drop_idle(self) -> None:
        """Every model unused for `idle_s` goes; the sweeper stops once nothing is held."""
        while self._held:
            await asyncio.sleep(self.config.idle_s / 4)
            now = time.monotonic()
            for name, (_, used) in list(self._held.items()):
                if now - used > self.config.idle_s:
                    del self._held[name]
                    logger.info("standby dropped model %s (idle %.0fs)", name, now - used)

    def held_models(self) -> list[str]:
        """The models this replica holds right now (a handle method, for operators and tests)."""
        return list(self._held)
