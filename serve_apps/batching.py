"""Dynamic batching whose batches follow the offered load: a batch forms when the model is free to run it.

Ray's `@serve.batch` forms the next batch as soon as the last one *starts*: while the model works on it,
requests arriving within `batch_wait_timeout_s` of each other become small batches that queue behind it. With
32 callers sending one sentence each to MiniLM, batches averaged 2.8 rows while up to 32 waited. Here,
requests wait in one queue per model id while the model runs, and the next batch takes everything waiting (up
to `max_rows`) the moment the model is free: the busier the model, the larger its batches. The timeout keeps
Triton's meaning (its `max_queue_delay`): how long the *oldest* waiting request may wait for company, so a
request that already waited out a busy model goes at once, with whatever came after it.

Sized in rows, not requests (one call carrying 20 rows and 20 calls carrying one row fill a batch alike); a
multiplexed family batches one model id at a time, the longest-waiting id first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ._delivery import deliver

__all__ = ["RowBatcher"]

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    rows: int
    future: asyncio.Future[Result]
    since: float = field(default_factory=time.monotonic)


class RowBatcher(Generic[Item, Result]):
    """`await batcher.submit(key, item, rows)` returns `run(key, items)`'s answer for `item`, computed in a batch
    with whatever else waited for the same `key` (a multiplexed model id, or None). `run` gets at most `max_rows`
    rows, runs one batch at a time, and returns one result per item, in order."""

    def __init__(
        self, run: Callable[[str | None, list[Item]], Awaitable[list[Result]]], max_rows: int, max_delay_s: float
    ):
        self._run = run
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._waiting: dict[str | None, deque[_Waiting[Item, Result]]] = {}
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, key: str | None, item: Item, rows: int) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(_Waiting(item, rows, future))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="row-batcher")
        return await future

    def waiting_rows(self, key: str | None = None) -> int:
        return sum(w.rows for w in self._waiting.get(key, ()) if not w.future.done())

    async def _work(self) -> None:
        while True:
            key = await self._next_key()
            await self._fill(key)
            batch = self._take(key)
            if batch:
                await self._answer(key, batch)

    async def _next_key(self) -> str | None:
        """The model id whose oldest live request has waited longest (once there is one)."""
        while True:
            for queue in self._waiting.values():
                while queue and queue[0].future.done():  # its caller gave up (a cancelled request)
                    queue.popleft()
            live = {key: queue[0].since for key, queue in self._waiting.items() if queue}
            self._waiting = {key: queue for key, queue in self._waiting.items() if queue}
            if live:
                return min(live, key=live.__getitem__)
            self._arrived.clear()
            await self._arrived.wait()

    async def _fill(self, key: str | None) -> None:
        """Wait for company until `max_rows` wait or the oldest request has waited `max_delay_s`."""
        oldest = self._waiting[key][0].since
        while self.waiting_rows(key) < self.max_rows:
            left = oldest + self.max_delay_s - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def _take(self, key: str | None) -> list[_Waiting[Item, Result]]:
        """Up to `max_rows` rows, oldest first; a request that would overflow the batch heads the next one."""
        queue, rows = self._waiting[key], 0
        batch: list[_Waiting[Item, Result]] = []
        while queue:
            head = queue[0]
            if head.future.done():
                queue.popleft()
                continue
            if batch and rows + head.rows > self.max_rows:
                break
            batch.append(queue.popleft())
            rows += head.rows
        return batch

    async def _answer(self, key: str | None, batch: list[_Waiting[Item, Result]]) -> None:
        # Every request of a failed batch fails alike and the batcher goes on; cancelled (the replica stops), it
        # stops with it.
        await deliver([w.future for w in batch], self._run(key, [w.item for w in batch]))
