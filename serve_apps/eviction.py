"""Which model a full multiplexed replica unloads: the one asked for least of late, not merely the least recent.

Ray Serve's multiplexing keeps the `max_models_per_replica` most recently used models of a family and unloads
the least recently used. Traffic to many per-customer models is skewed (a few are asked for all the time, most
rarely): under LRU a run of rare ids pushes popular models out, and each comes back at the cost of a load. With
`multiplex.eviction: frequency` (the default) a replica counts how often each id was asked for and unloads the
loaded model with the lowest count, the least recent among equals, so with even traffic it is LRU. Counts are
halved every `WINDOW_PER_MODEL` x capacity requests (TinyLFU's reset), so a model that stops being popular does
not stay forever and the counter holds only ids asked for lately. On bench/many_models.py (1,000 models, Zipf
traffic, 2 replicas x 50) this turned a hit ratio below an ideal LRU's into one above it (0.73 vs 0.67), with the
two replicas' load still even (BENCHMARKS.md).

It is Serve's own multiplexing (routing by model id, loading under Serve's lock, its metrics), with one
method changed: the wrapper Serve creates on a multiplexed function's first call is created here first, as a
subclass whose `unload_model_lru` picks the victim by count.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from ray import serve
from ray.serve.multiplex import _ModelMultiplexWrapper

__all__ = ["Eviction", "RecentFrequency", "multiplexed"]

Eviction = Literal["frequency", "lru"]
WINDOW_PER_MODEL = 10  # requests per loaded model between halvings: TinyLFU's sample size
# Where @serve.multiplexed keeps a function's cache once called (ray/serve/api.py, `_multiplex_decorator`).
_SERVE_WRAPPER_ATTR = "__serve_multiplex_wrapper"


class RecentFrequency:
    """How often each key was asked for lately: counts halved (and zeros dropped) every `window` records."""

    def __init__(self, window: int):
        self.window = window
        self.counts: Counter[str] = Counter()
        self._since_halving = 0

    def record(self, key: str) -> None:
        self.counts[key] += 1
        self._since_halving += 1
        if self._since_halving >= self.window:
            self._since_halving = 0
            self.counts = Counter({k: c // 2 for k, c in self.counts.items() if c > 1})

    def victim(self, keys_least_recent_first: Iterable[str]) -> str:
        """The key asked for least; among equals, the first (least recent) one."""
        return min(keys_least_recent_first, key=lambda k: self.counts[k])


class _FrequencyAwareWrapper(_ModelMultiplexWrapper):
    """Serve's model cache for a family, counting requests per id and unloading the least asked for."""

    def __init__(self, load: Callable[[str], Awaitable[Any]], capacity: int):
        super().__init__(load, None, capacity)
        self.frequency = RecentFrequency(WINDOW_PER_MODEL * capacity)

    async def load_model(self, model_id: str) -> Any:
        self.frequency.record(model_id)
        return await super().load_model(model_id)

    async def unload_model_lru(self) -> None:
        # self.models is least recently used first; Serve unloads the first, so put the victim there.
        self.models.move_to_end(self.frequency.victim(self.models), last=False)
        await super().unload_model_lru()


def multiplexed(
    load: Callable[[str], Awaitable[Any]], capacity: int, eviction: Eviction = "frequency"
) -> Callable[[str], Awaitable[Any]]:
    """`serve.multiplexed(max_num_models_per_replica=capacity)(load)`, unloading by `eviction`."""
    variant = serve.multiplexed(max_num_models_per_replica=capacity)(load)
    if eviction == "lru":
        return variant

    @functools.wraps(variant)  # keeps Serve's marker that says this replica multiplexes
    async def frequency_aware(model_id: str) -> Any:
        if not hasattr(load, _SERVE_WRAPPER_ATTR):  # first call, in the replica: Serve's context is there
            setattr(load, _SERVE_WRAPPER_ATTR, _FrequencyAwareWrapper(load, capacity))
        return await variant(model_id)

    return frequency_aware
