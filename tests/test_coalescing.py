"""The coalesced hop on its own (no Ray): requests that wait together leave as one call and each caller gets its own
answer or error; the replica's end counts requests for the autoscaler, and the policy scales on them. Through real
replicas in test_serving.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serve_apps.autoscaling_policy import REQUESTS_METRIC, requests_policy
from serve_apps.coalescing import Coalescer, ManyRequests
from serve_apps.request_error import RequestError
from tests.helpers import eventually, run_async


class _Deployment:
    """A deployment whose calls finish when the test says so; it records what each call carried."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, list[int]]] = []
        self.release = asyncio.Event()
        self.fail_call = False

    async def send(self, key: str | None, items: list[int]) -> list[int | Exception]:
        self.calls.append((key, list(items)))
        await self.release.wait()
        if self.fail_call:
            raise ConnectionError("the replica went away")
        return [ValueError(f"bad {item}") if item < 0 else item * 10 for item in items]


def test_requests_that_wait_together_leave_as_one_call_and_each_caller_gets_its_own_answer() -> None:
    async def scenario() -> None:
        deployment = _Deployment()
        coalescer = Coalescer(deployment.send, max_calls=lambda: 8)
        calls = [asyncio.create_task(coalescer.call(None, i)) for i in range(20)]
        await eventually(lambda: deployment.calls, "a call")
        deployment.release.set()
        assert await asyncio.gather(*calls) == [i * 10 for i in range(20)]
        assert deployment.calls == [(None, list(range(20)))]

    run_async(scenario())


def test_under_light_load_a_request_leaves_at_once_and_alone() -> None:
    async def scenario() -> None:
        deployment = _Deployment()
        deployment.release.set()
        coalescer = Coalescer(deployment.send, max_calls=lambda: 8)
        assert [await coalescer.call(None, i) for i in range(3)] == [0, 10, 20]
        assert deployment.calls == [(None, [0]), (None, [1]), (None, [2])]

    run_async(scenario())


def test_at_capacity_the_rest_wait_and_leave_together_when_a_call_comes_back() -> None:
    async def scenario() -> None:
        deployment = _Deployment()
        coalescer = Coalescer(deployment.send, max_calls=lambda: 1)
        first = asyncio.create_task(coalescer.call(None, 0))
        await eventually(lambda: len(deployment.calls) == 1, "the first call")
        rest = [asyncio.create_task(coalescer.call(None, i)) for i in range(1, 9)]
        await asyncio.sleep(0.01)
        assert len(deployment.calls) == 1, "a second call left while the only slot was taken"
        deployment.release.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == [i * 10 for i in range(1, 9)]
        assert deployment.calls == [(None, [0]), (None, list(range(1, 9)))]
        assert coalescer.calls_in_flight == 0

    run_async(scenario())


def test_a_batched_models_requests_wait_for_company_while_a_call_is_out() -> None:
    """Requests arriving a moment apart while the replica is busy leave together (up to `gather`), so its next batch
    is whole; a lone one leaves after `gather_s`; with no call out nothing waits."""

    async def scenario() -> None:
        deployment = _Deployment()
        coalescer = Coalescer(deployment.send, max_calls=lambda: 8, gather=4, gather_s=0.3)
        first = asyncio.create_task(coalescer.call(None, 0))
        await eventually(lambda: len(deployment.calls) == 1, "the first call, at once: none was out")
        trickle = []
        for i in range(1, 4):  # one per turn of the loop, a moment apart: free slots, but a call is out
            trickle.append(asyncio.create_task(coalescer.call(None, i)))
            await asyncio.sleep(0.01)
        assert len(deployment.calls) == 1, "a request left alone while a call was out and it could wait for company"
        trickle.append(asyncio.create_task(coalescer.call(None, 4)))
        await eventually(lambda: len(deployment.calls) == 2, "the four, together")
        assert deployment.calls[1] == (None, [1, 2, 3, 4])
        lone = asyncio.create_task(coalescer.call(None, 5))
        await asyncio.sleep(0.05)
        assert len(deployment.calls) == 2, "the lone request left before gather_s"
        await eventually(lambda: len(deployment.calls) == 3, "the lone request, after gather_s")
        deployment.release.set()
        assert await asyncio.gather(first, *trickle, lone) == [i * 10 for i in range(6)]
        assert deployment.calls[2] == (None, [5])

    run_async(scenario())


def test_each_model_id_gets_calls_of_its_own() -> None:
    async def scenario() -> None:
        deployment = _Deployment()
        coalescer = Coalescer(deployment.send, max_calls=lambda: 8)
        calls = [asyncio.create_task(coalescer.call(f"m{i % 2}", i)) for i in range(6)]
        await eventually(lambda: len(deployment.calls) == 2, "a call per model id")
        deployment.release.set()
        assert await asyncio.gather(*calls) == [i * 10 for i in range(6)]
        assert sorted(deployment.calls) == [("m0", [0, 2, 4]), ("m1", [1, 3, 5])]

    run_async(scenario())


def test_a_requests_error_is_its_own_and_a_failed_call_fails_only_its_callers() -> None:
    async def scenario() -> None:
        deployment = _Deployment()
        coalescer = Coalescer(deployment.send, max_calls=lambda: 1)
        mixed = [asyncio.create_task(coalescer.call(None, i)) for i in (1, -2, 3)]
        await eventually(lambda: deployment.calls, "a call")
        deployment.release.set()
        answers = await asyncio.gather(*mixed, return_exceptions=True)
        assert answers[0] == 10 and answers[2] == 30
        assert isinstance(answers[1], ValueError) and str(answers[1]) == "bad -2"

        deployment.release.clear()
        deployment.fail_call = True
        doomed = [asyncio.create_task(coalescer.call(None, i)) for i in (4, 5)]
        await eventually(lambda: len(deployment.calls) == 2, "the failing call")
        deployment.release.set()
        for outcome in await asyncio.gather(*doomed, return_exceptions=True):
            assert isinstance(outcome, ConnectionError)
        deployment.fail_call = False
        assert await coalescer.call(None, 6) == 60, "the coalescer stopped after a failed call"

    run_async(scenario())


def test_a_caller_that_gave_up_before_its_call_left_is_not_sent() -> None:
    async def scenario() -> None:
        deployment = _Deployment()
        coalescer = Coalescer(deployment.send, max_calls=lambda: 1)
        first = asyncio.create_task(coalescer.call(None, 0))
        await eventually(lambda: deployment.calls, "the first call")
        gave_up = asyncio.create_task(coalescer.call(None, 1))
        stays = asyncio.create_task(coalescer.call(None, 2))
        await asyncio.sleep(0)
        gave_up.cancel()
        deployment.release.set()
        assert (await first, await stays) == (0, 20)
        assert deployment.calls == [(None, [0]), (None, [2])]

    run_async(scenario())


def test_beyond_capacity_and_max_queued_a_request_is_turned_away_at_once() -> None:
    """Serve's max_queued_requests, kept: 1 admitted and 1 queued: of 4 at once, 2 are turned away."""
    from ray.serve.exceptions import BackPressureError

    async def scenario() -> None:
        deployment = _Deployment()
        coalescer = Coalescer(deployment.send, max_calls=lambda: 1, max_queued=1, admitted=lambda: 1)
        calls = [asyncio.create_task(coalescer.call(None, i)) for i in range(4)]
        await eventually(lambda: deployment.calls, "a call")
        deployment.release.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert outcomes[:2] == [0, 10]
        assert all(isinstance(o, BackPressureError) for o in outcomes[2:]), outcomes
        assert await coalescer.call(None, 5) == 50, "the queue did not drain"

    run_async(scenario())


class _Replica(ManyRequests):
    name = "test-model"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def _infer(self, inputs: int) -> int:
        await self.release.wait()
        if inputs == -1:
            raise RequestError(404, "no such thing")
        if inputs < 0:
            raise ZeroDivisionError("the model broke")
        return inputs + 1


def test_the_replica_answers_each_request_of_a_call_and_counts_requests_not_calls() -> None:
    async def scenario() -> None:
        replica = _Replica()
        many = asyncio.create_task(replica.infer_many([1, -1, -2, 4]))
        one = asyncio.create_task(replica.infer(7))
        await eventually(lambda: replica.record_autoscaling_stats() == {REQUESTS_METRIC: 5}, "five requests counted")
        replica.release.set()
        answers, single = await many, await one
        assert single == 8
        assert answers[0] == 2 and answers[3] == 5
        assert isinstance(answers[1], RequestError) and answers[1].status == 404
        assert isinstance(answers[2], RuntimeError) and "ZeroDivisionError: the model broke" in str(answers[2])
        assert replica.record_autoscaling_stats() == {REQUESTS_METRIC: 0}

    run_async(scenario())


def _context(replicas: int, calls: float, queued: float, requests: list[float] | None, target: float = 2.0):
    ids = [f"r{i}" for i in range(replicas)]
    metrics = None if requests is None else {REQUESTS_METRIC: dict(zip(ids, requests, strict=True))}
    return SimpleNamespace(
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        running_replicas=ids,
        total_num_requests=calls,
        total_queued_requests=queued,
        aggregated_metrics=metrics,
        config=SimpleNamespace(get_target_ongoing_requests=lambda: target),
    )


@pytest.mark.parametrize(
    ("replicas", "calls", "queued", "requests", "desired"),
    [
        (1, 2, 0, [16], 8),  # two coalesced calls carrying 16 requests: Serve alone would see 2 and keep 1 replica
        (2, 4, 2, [6, 10], 9),  # requests in replicas plus calls still queued at handles
        (1, 3, 0, [0], 1.5),  # before the replicas report: Serve's own count
        (1, 3, 0, None, 1.5),  # no custom metrics at all (a replica that does not report them)
        (2, 0, 0, [0, 0], 0),  # idle: scale down, as Serve's default would
    ],
)
def test_the_policy_applies_serves_rule_to_requests(replicas, calls, queued, requests, desired) -> None:
    assert requests_policy(_context(replicas, calls, queued, requests)) == (pytest.approx(desired), {})


def test_with_no_replica_the_policy_keeps_serves_target() -> None:
    ctx = _context(0, 5, 5, None)
    ctx.target_num_replicas = 1
    assert requests_policy(ctx) == (1, {})
