"""The example trainers' `--register`: what they trained (or had trained before) registered by the real `modelfleet
models register`, in a registry of the test's own; and digits' deliberately bad version, whose faults live in the
artifact. No Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from registry import ModelVersion, Registry
from tests.helpers import ROOT

INJECTED = r"injected failure \(examples.digits FaultyDigitsNet\)"


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _train(example: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m examples.EXAMPLE.train ARGS` as a user runs it, registering in `home`'s registry."""
    unset = ("MODELFLEET_REGISTRY_URL", "MODELFLEET_ARTIFACT_ROOT", "MODELFLEET_WEBHOOKS")
    env = {k: v for k, v in os.environ.items() if k not in unset} | {"MODELFLEET_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", f"examples.{example}.train", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@contextmanager
def _registry(home: Path) -> Iterator[Registry]:
    store = Registry(f"sqlite:///{home}/registry.db")
    try:
        yield store
    finally:
        store.close()


def _weights(version: ModelVersion) -> dict[str, torch.Tensor]:
    return load_file(version.artifact_uri.removeprefix("file://"))


def test_digits_and_its_faulty_version_are_registered(tmp_path: Path, home: Path) -> None:
    from examples.digits.model import DigitsNet, FaultyDigitsNet

    good, bad = tmp_path / "digits" / "model.safetensors", tmp_path / "faulty" / "model.safetensors"
    _train("digits", home, "--out", str(good), "--register")
    _train("digits", home, "--fail-rate", "0.5", "--delay-ms", "1", "--out", str(bad), "--register")
    again = _train("digits", home, "--out", str(good), "--register")
    assert "exists" in again.stdout, "weights already there: registered, not retrained"

    with _registry(home) as store:
        v1, v2, v3 = store.versions("digits")
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    assert (v1.format, v1.module) == ("safetensors", "examples.digits.model:DigitsNet")
    assert v1.metrics["accuracy"] >= 0.95 and v1.params == {"epochs": 30, "seed": 0} and not v1.tags
    assert v1.lineage["dataset"] == {"uri": "sklearn:load_digits"}
    assert (v3.artifact_uri, v3.metrics) == (v1.artifact_uri, v1.metrics), "same bytes, same artifact and accuracy"
    assert v2.module == "examples.digits.model:FaultyDigitsNet" and v2.tags == {"faults": "injected"}
    assert (v2.params["fail_rate"], v2.params["delay_ms"]) == (0.5, 1.0)

    # The faults are in the artifact: plain DigitsNet refuses it, as the safetensors loader would (strict).
    state = _weights(v2)
    assert (float(state["fault_fail_rate"]), float(state["fault_delay_s"])) == pytest.approx((0.5, 0.001))
    assert "fault_fail_rate" not in _weights(v1)
    with pytest.raises(RuntimeError, match="Unexpected key.*fault_fail_rate"):
        DigitsNet().load_state_dict(state, strict=True)
    faulty, plain = FaultyDigitsNet(), DigitsNet()
    faulty.load_state_dict(state, strict=True)
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("fault_")}, strict=True)
    faulty.eval()
    plain.eval()

    pixels = torch.rand(4, 64) * 16
    answers, failures = [], 0
    for _ in range(40):  # each call fails with probability 0.5: all 40 alike has odds 2**-39
        try:
            answers.append(faulty(pixels))
        except RuntimeError as exc:
            assert str(exc) == "injected failure (examples.digits FaultyDigitsNet)"
            failures += 1
    assert 0 < failures < 40
    assert all(torch.equal(answer, plain(pixels)) for answer in answers), "when it answers, it answers as DigitsNet"
    faulty.fault_fail_rate.fill_(1.0)
    with pytest.raises(RuntimeError, match=INJECTED):
        faulty(pixels)


def test_fraud_registers_the_pipelines_single_artifact_models(tmp_path: Path, home: Path) -> None:
    """About 8 s of training (2 merchants instead of 50)."""
    from serve_apps.spec import load_app_spec

    _train("fraud", home, "--out", str(tmp_path / "fraud"), "--merchants", "2", "--register")
    served = {m.name: m for m in load_app_spec(ROOT / "examples/fraud/app.yaml").models}
    with _registry(home) as store:
        assert store.models() == ["ensemble", "featurizer", "scorer_lr", "scorer_mlp"], "not the merchants"
        versions = {name: store.versions(name) for name in store.models()}
    for name, (version,) in versions.items():
        assert (version.format, version.module) == (served[name].format.value, served[name].module)
        assert version.lineage["dataset"] == {"uri": "synthetic:examples.fraud.data"}
    assert versions["ensemble"][0].metrics["auc"] >= 0.80
    assert not versions["featurizer"][0].metrics
