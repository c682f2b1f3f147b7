"""One handle call for many requests: what the ingress (and a pipeline) do before the hop to a model's replicas.

Each Ray Serve handle call costs about a millisecond of CPU in the caller and most of one in the replica (router,
gRPC, pickling), whatever it carries; an echo behind one answered 0.17x what a bare uvicorn echo does. Here,
requests for the same deployment and model id that wait at the same moment leave as one call carrying them all,
and each caller gets back its own answer (or its own error). A call to replicas that all run on the caller's node
skips the handle too: it goes over a Unix socket (local_hop.py).

Requests that arrive in the same turn of the event loop leave together at its end, and while the deployment
already holds `max_calls()` calls (two per running replica: one being answered, one on its way, as a batcher keeps
one batch running and one filling) the rest wait here and leave as one call when a call comes back. Under light
load every request leaves alone, at once; the busier the caller, the more each call carries. For a batched model
one more rule: while a call is out (its replica is busy, so the next batch forms when that call's batch is done),
requests wait here for company, up to the model's `max_batch_size` of them or its `batch_wait_timeout_s`, as the
replica's batcher would. Without it, the callers of a call that came back re-sent their next requests a moment
apart, the first of them left alone in the free slot, and the rest waited a whole batch: batches of 5 rows where 8
could form, and a third less throughput on four replicas (bench.autoscale).

Inside the replica the requests of a call run as separate requests would (an unbatched model at most
`max_ongoing_requests` at once, a batched one through its batcher), and the replica counts requests, not calls,
for the autoscaler (`ManyRequests.record_autoscaling_stats`, `autoscaling_policy.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError

from ._delivery import deliver
from .autoscaling_policy import REQUESTS_METRIC
from .local_hop import LocalDoor, LocalReplicas, NotSent, ReplicaLost
from .request_error import RequestError

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from ._deployment_states import DeploymentStates
    from .spec import ModelSpec

__all__ = ["Coalescer", "ManyRequests", "hop", "model_hop", "once_more_if_the_replica_died"]

logger = logging.getLogger("ray.serve")

CALLS_PER_REPLICA = 2  # in flight to each replica: one being answered, one on its way
# How old the count of a deployment's running replicas may be when it sizes calls and picks the local hop: a few
# seconds' lag costs a scaled deployment a little concurrency; a fresher count costs Serve's controller a status each.
RUNNING_MAX_AGE_S = 5.0

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    since: float = field(default_factory=time.monotonic)


class Coalescer(Generic[Item, Result]):
    """`await coalescer.call(key, item)` returns `send(key, items)`'s answer for `item`, sent in one call with the
    items that waited with it for the same `key` (a multiplexed model id, or None).

    `send` returns one entry per item, in order: a result, or an exception that is raised to that item's caller
    alone. An exception raised by `send` itself reaches every caller of that call.

    `max_queued` keeps Serve's `max_queued_requests` for callers: requests beyond the `admitted()` ones (in calls or
    waiting here) are queued, and past `max_queued` of them a new request gets Serve's BackPressureError at once
    (-1: no limit).

    `gather`, `gather_s` (a batched model's max_batch_size and batch_wait_timeout_s): while a call is in flight,
    requests for a key leave once `gather` of them wait or the oldest has waited `gather_s` (0: no gathering).
    """

    def __init__(
        self,
        send: Callable[[str | None, list[Item]], Awaitable[list[Result | Exception]]],
        max_calls: Callable[[], int],
        max_queued: int = -1,
        admitted: Callable[[], int] = lambda: 1,
        gather: int = 0,
        gather_s: float = 0.0,
    ):
        self._send = send
        self._max_calls = max_calls
        self._admitted = admitted
        self._max_queued = max_queued
        self._gather, self._gather_s = gather, gather_s
        self._timer: asyncio.TimerHandle | None = None
        self._requests = 0  # in calls or waiting here
        self._waiting: dict[str | None, list[_Waiting[Item, Result]]] = {}
        self._in_flight = 0
        self._flush_scheduled = False
        self._calls: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references to tasks

    @property
    def calls_in_flight(self) -> int:
        return self._in_flight

    async def call(self, key: str | None, item: Item) -> Result:
        if self._max_queued >= 0:
            queued = self._requests - self._admitted()
            if queued >= self._max_queued:
                raise BackPressureError(num_queued_requests=max(0, queued), max_queued_requests=self._max_queued)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(_Waiting(item, future))
        self._schedule_flush()
        self._requests += 1
        try:
            return await future
        finally:
            self._requests -= 1

    def _schedule_flush(self) -> None:
        """At the end of this turn of the loop: after every request that became ready in it."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for key in list(self._waiting):  # oldest key first: dicts keep insertion order
            if self._in_flight >= max(1, self._max_calls()):
                return  # the rest leaves when a call comes back (_call)
            if self._gathering(self._waiting[key]):
                continue
            batch = [w for w in self._waiting.pop(key) if not w.future.done()]  # drop callers that gave up
            if batch:
                self._in_flight += 1
                task = asyncio.get_running_loop().create_task(self._call(key, batch), name="coalesced-call")
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)

    def _gathering(self, waiting: list[_Waiting[Item, Result]]) -> bool:
        """Whether these requests should wait for company a little longer (and a flush is set for when they stop)."""
        if not self._gather_s or not self._in_flight or len(waiting) >= self._gather:
            return False
        left = waiting[0].since + self._gather_s - time.monotonic()
        if left <= 0:
            return False
        if self._timer is None or self._timer.when() > asyncio.get_running_loop().time() + left:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(left, self._on_timer)
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule_flush()

    async def _call(self, key: str | None, batch: list[_Waiting[Item, Result]]) -> None:
        try:
            await deliver([w.future for w in batch], self._send(key, [w.item for w in batch]))
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._schedule_flush()


async def once_more_if_the_replica_died(call: Callable[[], Awaitable[Any]], retry: Callable[[], bool]) -> Any:
    """`await call()`, and if its replica died (or became unreachable) before it answered, once more when `retry()`
    says so: inference is a pure function of its inputs, so asking again, of a replica Serve still holds live, is
    safe; a second failure is the caller's."""
    try:
        return await call()
    except (ActorDiedError, ActorUnavailableError, ReplicaLost):
        if not retry():
            raise
        return await call()


def hop(
    handle: DeploymentHandle,
    deployment: str,
    states: DeploymentStates,
    *,
    max_ongoing_requests: int,
    min_replicas: int = 1,
    max_queued_requests: int = -1,
    retry_on_replica_death: Callable[[], bool] = lambda: False,
    on_call: Callable[[int], None] = lambda requests: None,
    gather: int = 0,
    gather_s: float = 0.0,
    local: LocalReplicas | None = None,
    on_local_call: Callable[[], None] = lambda: None,
    app: str | None = None,
) -> Coalescer[Any, Any]:
    """The coalesced hop to a deployment (its `ManyRequests.infer_many`; of application `app`, when not the caller's):
    two calls in flight per running replica (one if it admits one request at a time), `min_replicas`' worth (at least
    one) while none runs yet (Serve starts one); Serve's `max_queued_requests` counted beyond `max_ongoing_requests` per
    replica; `gather`, `gather_s` as in `Coalescer`.

    `retry_on_replica_death()`: asked when a call's replica died before answering; True sends the call once more.
    `on_call(requests)`: told what each call carries (for metrics).
    `local`: the deployment's replicas on this node, called over the local hop (local_hop.py) while every running
    replica is one of them; `on_local_call()` is told of each such call.
    """

    async def send(model_id: str | None, many: list[Any]) -> list[Any]:
        target = handle if model_id is None else handle.options(multiplexed_model_id=model_id)
        on_call(len(many))

        async def one_call() -> list[Any]:
            door = (
                local.pick(states.running_replicas(deployment, RUNNING_MAX_AGE_S, app))
                if local is not None and model_id is None
                else None
            )
            if door is not None:
                try:
                    answers = await door.call(many)
                except NotSent:
                    pass  # it never reached the replica: the handle takes it
                else:
                    on_local_call()
                    return answers
            return await target.infer_many.remote(many)

        return await once_more_if_the_replica_died(one_call, retry_on_replica_death)

    def replicas() -> int:
        return max(1, states.running_replicas(deployment, RUNNING_MAX_AGE_S, app) or min_replicas)

    calls_per_replica = min(CALLS_PER_REPLICA, max_ongoing_requests)
    return Coalescer(
        send,
        max_calls=lambda: replicas() * calls_per_replica,
        max_queued=max_queued_requests,
        admitted=lambda: replicas() * max_ongoing_requests,
        gather=gather,
        gather_s=gather_s,
    )


def model_hop(
    handle: DeploymentHandle,
    spec: ModelSpec,
    states: DeploymentStates,
    retry_on_replica_death: Callable[[], bool] = lambda: False,
    on_call: Callable[[int], None] = lambda requests: None,
    local_hop: bool = False,
    on_local_call: Callable[[], None] = lambda: None,
    deployment: str | None = None,
    app: str | None = None,
) -> Coalescer[Any, Any]:
    """`hop` to a model's own deployment (`deployment`, when not named after the model: a candidate version's), sized
    by its spec (a batched model's requests gathered as its batches); `local_hop`: over a Unix socket to its replicas
    on this node, when all run here (a multiplexed family's calls keep the handle, which routes a model id to the
    replica holding it)."""
    batching = spec.batching
    deployment = deployment or spec.name
    return hop(
        handle,
        deployment,
        states,
        max_ongoing_requests=spec.max_ongoing_requests,
        min_replicas=spec.autoscaling.min_replicas,
        max_queued_requests=spec.max_queued_requests,
        retry_on_replica_death=retry_on_replica_death,
        on_call=on_call,
        gather=batching.max_batch_size if batching else 0,
        gather_s=batching.batch_wait_timeout_s if batching else 0.0,
        local=LocalReplicas(deployment, app=app) if local_hop and spec.multiplex is None else None,
        on_local_call=on_local_call,
        app=app,
    )


class ManyRequests:
    """The replica's end of the hop: `infer` for one request, `infer_many` for several sent in one call, and the
    count of requests (not calls) the autoscaler scales on. Subclasses implement `_infer` and set `name`."""

    name: str = "model"
    _requests: int = 0  # requests in this replica, running or waiting: what the autoscaler counts
    _door: LocalDoor | None = None

    def _open_local_door(self) -> None:
        """Answer `infer_many` calls over the local hop too (local_hop.py); from the constructor of a replica of the
        deployment (never of a model embedded in the ingress). Closed by `__del__`, which Serve calls on stopping."""
        from ray import serve

        context = serve.get_replica_context()
        self._door = LocalDoor.open(context.app_name, context.deployment, self.infer_many)

    def __del__(self) -> Awaitable[None] | None:
        """Serve awaits what this returns when it stops the replica: the local door's drain. (Not `async def`: the
        garbage collector calls `__del__` too, and a model embedded in the ingress has no door to close.)"""
        return self._door.close() if self._door is not None else None

    async def _infer(self, inputs: Any) -> Any:
        raise NotImplementedError

    async def infer(self, inputs: Any) -> Any:
        self._requests += 1
        try:
            return await self._infer(inputs)
        finally:
            self._requests -= 1

    async def infer_many(self, many: list[Any]) -> list[Any]:
        """`infer` for each request of one call: one answer or one error each, in order. A request's error is its
        own: the others of the call still get their answers."""
        self._requests += len(many)
        try:
            answers = await asyncio.gather(*(self._infer(inputs) for inputs in many), return_exceptions=True)
        finally:
            self._requests -= len(many)
        return [self._reportable(answer) if isinstance(answer, BaseException) else answer for answer in answers]

    def _reportable(self, error: BaseException) -> Exception:
        """What crosses back for a failed request: a RequestError as it is; any other failure is logged here, with its
        traceback, and crosses as its one-line description (the caller answers 500 with a request id)."""
        if isinstance(error, RequestError):
            return error
        if not isinstance(error, Exception):
            raise error  # cancelled: the replica stops
        logger.error("model %s failed", self.name, exc_info=error)
        return RuntimeError(f"{error.__class__.__name__}: {error}")

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve asks every replica for its custom autoscaling metrics: the requests here, however they came."""
        return {REQUESTS_METRIC: self._requests}
