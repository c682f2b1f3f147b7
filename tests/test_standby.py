"""The standby replica's own rules, without Ray: a model is loaded once however many requests wait for it, at most
`max_models` are held, and one unused for `idle_s` is dropped (its memory goes back). Through a real app, with the
ingress sending to it and waking the model, in test_serving.py."""

from __future__ import annotations

import asyncio

import pytest

from serve_apps.request_error import RequestError
from serve_apps.standby import StandbyDeployment
from tests.helpers import eventually, run_async


def _echo(name: str) -> dict:
    return {
        "name": name,
        "format": "builtin",
        "module": "echo",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "autoscaling": {"min_replicas": 0},
    }


def _standby(names: list[str], **config) -> StandbyDeployment:
    return StandbyDeployment({name: _echo(name) for name in names}, {"idle_s": 30, **config})


def test_a_model_is_loaded_once_however_many_requests_wait_for_it() -> None:
    async def scenario() -> None:
        standby = _standby(["a"])
        first, second = await asyncio.gather(standby._adopt("a"), standby._adopt("a"))
        assert first is second and standby.held_models() == ["a"]

    run_async(scenario())


def test_at_most_max_models_are_held_the_least_recently_used_goes_first() -> None:
    async def scenario() -> None:
        standby = _standby(["a", "b", "c"], max_models=2)
        await standby._adopt("a")
        await standby._adopt("b")
        await standby._adopt("a")  # used again: b is now the least recently used
        await standby._adopt("c")
        assert standby.held_models() == ["a", "c"]

    run_async(scenario())


def test_a_model_unused_for_idle_s_is_dropped() -> None:
    async def scenario() -> None:
        standby = _standby(["a"], idle_s=0.05)
        await standby._adopt("a")
        assert standby.held_models() == ["a"]
        await eventually(lambda: standby.held_models() == [], "the idle model dropped")

    run_async(scenario())


def test_a_model_it_has_no_spec_for_is_a_404() -> None:
    async def scenario() -> None:
        with pytest.raises(RequestError) as refused:
            await _standby(["a"])._adopt("nope")
        assert refused.value.status == 404

    run_async(scenario())
