"""The batcher on its own (no Ray): batches follow the load, hold one model id, and every caller gets its own
answer; through a real replica in test_serving.py."""

from __future__ import annotations

import asyncio

import pytest

from serve_apps.batching import RowBatcher
from tests.helpers import eventually, run_async


class _Model:
    """A model whose batches finish when the test says so; it records each batch it ran."""

    def __init__(self) -> None:
        self.batches: list[tuple[str | None, list[int]]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.fail_next = False

    async def run(self, key: str | None, items: list[int]) -> list[int]:
        self.batches.append((key, items))
        self.started.set()
        await self.release.wait()
        self.release.clear()
        if self.fail_next:
            self.fail_next = False
            raise ValueError("bad batch")
        return [item * 10 for item in items]


async def _release(model: _Model, calls: list[asyncio.Task], batches: int) -> None:
    """Let `batches` batches finish, one at a time, each after the next has started (or every call is done)."""
    for _ in range(batches):
        ran = len(model.batches)
        model.release.set()
        await eventually(lambda ran=ran: len(model.batches) > ran or all(c.done() for c in calls), "the next batch")


def test_a_busy_model_gets_everything_that_waited_as_its_next_batch() -> None:
    """One caller starts a batch; 31 more arrive while the model runs it: they are the next batch, whole.
    (Ray's @serve.batch formed them into batches of a few while the first ran.)"""

    async def scenario() -> None:
        model = _Model()
        batcher = RowBatcher(model.run, max_rows=64, max_delay_s=0.001)
        first = asyncio.create_task(batcher.submit(None, 0, 1))
        await model.started.wait()
        rest = [asyncio.create_task(batcher.submit(None, i, 1)) for i in range(1, 32)]
        await eventually(lambda: batcher.waiting_rows() == 31, "31 callers waiting")
        await asyncio.sleep(0.01)  # well past max_delay_s: the oldest has waited long enough, the model is busy
        assert len(model.batches) == 1, "no batch forms while the model is busy"
        model.release.set()
        assert await first == 0
        await eventually(lambda: len(model.batches) == 2, "the second batch")
        model.release.set()
        assert await asyncio.gather(*rest) == [i * 10 for i in range(1, 32)], "each caller its own answer"
        assert [len(items) for _, items in model.batches] == [1, 31]

    run_async(scenario())


def test_batches_hold_at_most_max_rows_and_a_request_that_overflows_heads_the_next() -> None:
    async def scenario() -> None:
        model = _Model()
        batcher = RowBatcher(model.run, max_rows=4, max_delay_s=0.001)
        blocker = asyncio.create_task(batcher.submit(None, 100, 1))
        await model.started.wait()
        sized = [(1, 3), (2, 2), (3, 1), (4, 1)]  # (item, rows)
        calls = [asyncio.create_task(batcher.submit(None, item, rows)) for item, rows in sized]
        await eventually(lambda: batcher.waiting_rows() == 7, "all waiting")
        await _release(model, calls, batches=3)
        model.release.set()
        assert await blocker == 1000 and await asyncio.gather(*calls) == [10, 20, 30, 40]
        assert [items for _, items in model.batches] == [[100], [1], [2, 3, 4]]  # 3 rows, then 2+1+1 = 4

    run_async(scenario())


def test_a_batch_holds_one_model_id_and_the_longest_waiting_id_goes_first() -> None:
    async def scenario() -> None:
        model = _Model()
        batcher = RowBatcher(model.run, max_rows=8, max_delay_s=0.001)
        blocker = asyncio.create_task(batcher.submit("a", 0, 1))
        await model.started.wait()
        order = ["b", "a", "b", "a", "b"]
        calls = [asyncio.create_task(batcher.submit(key, i, 1)) for i, key in enumerate(order, start=1)]
        await eventually(lambda: batcher.waiting_rows("a") + batcher.waiting_rows("b") == 5, "all waiting")
        await _release(model, calls, batches=3)
        assert await blocker == 0 and await asyncio.gather(*calls) == [10, 20, 30, 40, 50]
        assert model.batches == [("a", [0]), ("b", [1, 3, 5]), ("a", [2, 4])]

    run_async(scenario())


def test_a_failed_batch_fails_its_callers_alike_and_the_next_batch_runs() -> None:
    async def scenario() -> None:
        model = _Model()
        batcher = RowBatcher(model.run, max_rows=8, max_delay_s=0.001)
        model.fail_next = True
        doomed = [asyncio.create_task(batcher.submit(None, i, 1)) for i in range(3)]
        await model.started.wait()
        model.release.set()
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results), results
        later = asyncio.create_task(batcher.submit(None, 7, 1))
        await eventually(lambda: len(model.batches) == 2, "the next batch")
        model.release.set()
        assert await later == 70

    run_async(scenario())


def test_a_caller_that_gave_up_is_left_out_of_the_batch() -> None:
    async def scenario() -> None:
        model = _Model()
        batcher = RowBatcher(model.run, max_rows=8, max_delay_s=0.001)
        blocker = asyncio.create_task(batcher.submit(None, 0, 1))
        await model.started.wait()
        gone = asyncio.create_task(batcher.submit(None, 1, 1))
        kept = asyncio.create_task(batcher.submit(None, 2, 1))
        await eventually(lambda: batcher.waiting_rows() == 2, "both waiting")
        gone.cancel()  # the client disconnected; Serve cancels its request
        with pytest.raises(asyncio.CancelledError):
            await gone
        model.release.set()
        await eventually(lambda: len(model.batches) == 2, "the next batch")
        model.release.set()
        assert await blocker == 0 and await kept == 20
        assert model.batches[1] == (None, [2])

    run_async(scenario())
