"""Versions side by side, without Ray: how a request picks a version (traffic.py), what a candidate may be (the spec),
and how a rollout judges a window (rollout.py). Served for real: test_serving.py (`twin`) and test_rollout.py."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from serve_apps import rollout
from serve_apps.rollout import LATENCY_BUCKETS_S, SILENT_S, Limits, RolloutDesk, VersionTally, agreement, judge
from serve_apps.spec import AppSpec
from serve_apps.traffic import ModelTraffic, Route, unit_bucket
from tests.helpers import ROOT


def _split(weight: float, sticky: bool = False, shadow: float = 0) -> ModelTraffic:
    return ModelTraffic("1", (Route("2", "digits@2", None, weight, shadow),), sticky=sticky)


def test_a_random_split_follows_the_weights() -> None:
    picks = Counter(getattr(_split(25).pick("digits", None), "version", "1") for _ in range(20_000))
    assert 0.23 < picks["2"] / 20_000 < 0.27, picks
    assert _split(0).pick("digits", "alice") is None and _split(100).pick("digits", None) is not None


def test_a_sticky_split_keeps_each_unit_on_its_version_as_the_weight_grows() -> None:
    units = [f"user-{i}" for i in range(2_000)]
    at_5, at_25 = _split(5, sticky=True), _split(25, sticky=True)
    first = {u: at_5.pick("digits", u) is not None for u in units}
    assert all((at_5.pick("digits", u) is not None) == first[u] for u in units for _ in range(3)), "sticky"
    assert all(at_25.pick("digits", u) is not None for u in units if first[u]), "a 5% unit stays at 25%"
    share = sum(at_25.pick("digits", u) is not None for u in units) / len(units)
    assert 0.21 < share < 0.29, share
    assert unit_bucket("digits", "alice") != unit_bucket("fraud", "alice"), "each model splits units on its own"


def test_weights_above_100_percent_and_shadows_of_the_answering_version_are_refused() -> None:
    with pytest.raises(ValueError, match="add up to 110%"):
        ModelTraffic("1", (Route("2", "d@2", weight=60), Route("3", "d@3", weight=50)))
    both = _split(100, shadow=100)
    answering = both.pick("digits", None)
    assert answering is not None and both.shadows(answering) == [], "never a copy to the version that answers"
    assert [r.version for r in _split(0, shadow=100).shadows(None)] == ["2"]
    assert ModelTraffic.from_dict(both.to_dict()) == both


def _app(**candidate: object) -> dict:
    spec = yaml.safe_load((ROOT / "examples/digits/app.yaml").read_text())
    spec["models"][0]["candidates"] = [{"version": "2", "artifact": {"uri": "v2/model.safetensors"}, **candidate}]
    return spec


@pytest.mark.parametrize(
    ("candidate", "says"),
    [
        ({"weight": 101}, "less than or equal to 100"),
        ({"version": "1"}, "version(s) ['1'] served twice"),
        ({"version": None}, "candidates[0] needs a version"),
        ({"module": "not a module"}, "must look like 'package.module:Class'"),
    ],
)
def test_a_candidate_the_model_cannot_serve_is_refused(candidate: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(says)):
        AppSpec.model_validate(_app(**candidate))


def test_a_candidate_is_the_model_with_its_own_version_artifact_and_sizing() -> None:
    spec = AppSpec.model_validate(_app(weight=10, autoscaling={"min_replicas": 1, "max_replicas": 1}))
    (candidate,) = spec.candidate_specs()
    model = spec.models[0]
    assert (candidate.name, candidate.version, candidate.artifact.uri) == ("digits", "2", "v2/model.safetensors")
    assert (candidate.format, candidate.module, candidate.inputs) == (model.format, model.module, model.inputs)
    assert candidate.autoscaling.max_replicas == 1 and candidate.candidates == []
    assert spec.cpus_at_start()["digits@2"] == model.resources.num_cpus
    embedded = _app(weight=10)
    embedded["models"][0] |= {"embedded": True, "resources": {}, "autoscaling": {}}
    with pytest.raises(ValidationError, match="an embedded model serves one version"):
        AppSpec.model_validate(embedded)


def _tally(latencies_s: list[float], errors: int = 0) -> VersionTally:
    tally = VersionTally()
    for i, seconds in enumerate(latencies_s):
        tally.record(500 if i < errors else 200, seconds)
    return tally


def test_a_window_is_judged_on_errors_then_latency_and_too_few_requests_never_pass() -> None:
    limits = Limits(max_error_rate=0.01, max_p95_ratio=1.25, min_requests=100)
    baseline = _tally([0.010] * 200)
    assert judge(_tally([0.010] * 99), baseline, limits, None).outcome == "inconclusive"
    assert judge(_tally([0.010] * 100), baseline, limits, None).outcome == "pass"
    failing = judge(_tally([0.010] * 100, errors=20), baseline, limits, None)
    assert failing.outcome == "breach" and "error rate 20.00% > 1.00%" in failing.reason
    slow = judge(_tally([0.030] * 100), baseline, limits, None)
    assert slow.outcome == "breach" and "x the baseline's" in slow.reason
    # At 100% the baseline gets no requests: its p95 from an earlier window stands in.
    assert judge(_tally([0.030] * 100), VersionTally(), limits, 0.010).outcome == "breach"
    assert judge(_tally([0.010] * 100), VersionTally(), limits, None).outcome == "inconclusive"
    assert judge(_tally([0.2] * 100), baseline, Limits(max_p95_ratio=None, max_p95_ms=150), None).outcome == "breach"
    # While a window runs, only errors are judged: its first seconds are the candidate's warm-up.
    assert judge(_tally([0.030] * 100), baseline, limits, None, latency=False).outcome == "pass"
    assert judge(_tally([0.010] * 100, errors=20), baseline, limits, None, latency=False).outcome == "breach"


def test_tallies_subtract_into_windows_and_give_quantiles_within_a_bucket() -> None:
    earlier = _tally([0.001] * 50)
    later = earlier.plus(_tally([0.1] * 50, errors=5))
    window = later.minus(earlier)
    assert (window.requests, window.errors, window.error_rate) == (50, 5, 0.1)
    p95 = window.quantile_s(0.95)
    assert p95 is not None and 0.1 <= p95 < 0.1 * 1.2 + 1e-9
    assert VersionTally().quantile_s(0.95) is None and _tally([1e6]).quantile_s(0.5) == math.inf
    assert len(window.latency) == len(LATENCY_BUCKETS_S) + 1
    assert VersionTally.from_dict(window.to_dict()) == window


def test_the_desk_knows_which_live_ingress_replicas_have_not_heard_a_change(monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr(rollout.time, "monotonic", lambda: now[0])
    desk = RolloutDesk()
    split = ModelTraffic("1", (Route("2", "digits-v2", weight=50.0),)).to_dict()
    desk.sync("a", {})
    desk.sync("b", {})
    change = desk.set_traffic("digits", split)
    assert sorted(desk.unheard(change)) == ["a", "b"], "told before the change"
    assert desk.sync("a", {}) == {"digits": split}
    assert desk.unheard(change) == ["b"]
    now[0] += SILENT_S + 0.1
    assert desk.unheard(change) == [], "a replica silent for SILENT_S is gone (stopped, or dead): nobody waits for it"
    desk.sync("a", {})
    later = desk.set_traffic("digits", None)
    assert later > change and desk.unheard(later) == ["a"] and desk.sync("a", {}) == {}
    assert desk.unheard(later) == []


def test_shadow_agreement_is_by_label_and_gives_the_largest_gap() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    moved = scores + np.array([[0.0, 0.0], [0.0, 0.0], [-0.3, 0.3]], dtype=np.float32)
    rows, agreed, diff = agreement({"p": scores}, {"p": moved})
    assert (rows, agreed) == (3, 2) and diff == pytest.approx(0.3)
    labels = np.array([1, 2, 3])
    assert agreement({"y": labels}, {"y": np.array([1, 0, 3])})[:2] == (3, 2)
    assert agreement({"y": labels}, {"y": np.array([1, 2])}) == (3, 0, math.inf), "a shape that differs agrees nowhere"


def test_a_serve_config_carries_the_candidates_and_names_their_files(tmp_path) -> None:
    """For `serve deploy`, KubeRay and GitOps: `build`'s config holds the candidates and their weights, and says
    which of this machine's files the nodes need for them."""
    from serve_apps.build import local_needs, serve_config

    spec = AppSpec.model_validate(_app(weight=10, shadow=5))
    spec._base_dir = tmp_path
    config = serve_config(spec)
    (model,) = config["applications"][0]["args"]["spec"]["models"]
    assert [(c["version"], c["weight"], c["shadow"]) for c in model["candidates"]] == [("2", 10.0, 5.0)]
    assert model["candidates"][0]["artifact"]["uri"] == f"file://{tmp_path}/v2/model.safetensors"
    fields = [need.field for need in local_needs(config)]
    assert "models[0:digits].candidates[0].artifact.uri" in fields and "models[0:digits].artifact.uri" in fields
