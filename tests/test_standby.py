"""The standby replica's own rules, without Ray: a model is loaded once however many requests wait for it, at most
`max_models` are held, and one unused for `idle_s` is dropped (its memory goes back). Through a real app, with the
ingress sending to it and waking the model, in test_serving.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from serve_apps.request_error import RequestError
from serve_apps.standby import StandbyDeployment
from tests.helpers import ROOT, eventually, run_async


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


def test_a_standby_imports_its_models_libraries_before_any_request() -> None:
    """What makes a standby's cold start short: sentence-transformers' imports (seconds) are paid when it starts, so
    adopting MiniLM costs its load alone. A fresh interpreter, since this one may have imported them already."""
    script = """
import sys
from serve_apps.standby import StandbyDeployment
spec = {"name": "embeddings", "format": "sentence_transformers", "artifact": {"uri": sys.argv[1]},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}], "autoscaling": {"min_replicas": 0}}
assert "sentence_transformers" not in sys.modules
standby = StandbyDeployment({"embeddings": spec}, {"idle_s": 30})
print(sorted(name for name in ("torch", "sentence_transformers") if name in sys.modules), standby.held_models())
"""
    minilm = ROOT / "examples" / "embeddings" / "artifacts" / "all-MiniLM-L6-v2"
    result = subprocess.run(
        [sys.executable, "-c", script, f"{minilm}/"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == "['sentence_transformers', 'torch'] []", result.stdout  # none loaded yet


def test_the_server_is_ready_only_once_its_standby_is() -> None:
    """Until the standby runs, a scaled-to-zero model's first answer waits seconds (MiniLM's imports): a server
    with a standby says it is ready only once the standby is healthy too."""
    from types import SimpleNamespace

    from serve_apps.ingress import Ingress

    async def model_states() -> dict[str, str]:
        return {"sleepy": "HEALTHY", "digits": "HEALTHY"}

    def server(standby: str | None) -> SimpleNamespace:
        states = SimpleNamespace(statuses={"standby": standby} if standby else {})

        async def fresh() -> SimpleNamespace:
            return states

        states.fresh = fresh
        return SimpleNamespace(standby=object() if standby else None, states=states, _model_states=model_states)

    for standby, status in (("UPDATING", 503), ("HEALTHY", 200), (None, 200)):
        response = run_async(Ingress.ready(server(standby)))
        assert response.status_code == status, standby
