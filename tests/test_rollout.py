"""`modelfleet rollout` end to end, under a constant bounded load from loadtests/: an app of registered digits versions
deployed onto the session's Ray, then a good canary promoted with no failed request, a canary that fails 20% of its
requests rolled back at its first step, a shadow that fails and callers who never see it, and a killed `rollout
start` of a version 50 ms slower (3x and more) carried on by `rollout resume`, which takes it back on latency.
Intervals are short here; real-length runs belong to bench/. The pieces without Ray: test_traffic.py; the store:
test_registry.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from loadtests.chaos import BackgroundLoad
from registry import Registry, publish
from tests.helpers import ROOT, Fleet, delete_app, run_cli, wait_until

APP = "canary"
MODEL = "rollout-digits"  # its name in the registry (the app's model is `digits`)
INTERVAL = "2s"
LIMITS = ["--interval", INTERVAL, "--min-requests", "10", "--max-p95-ratio", "3"]
PIXELS = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [float(i % 17) for i in range(64)]}]
}
ROLLED_BACK = 3


@dataclass
class Canary:
    spec: Path
    url: str  # the model's V2 infer URL, through Serve's proxy
    address: str
    folder: Path
    versions: dict[str, int]  # good, good-again, faulty, slow -> registered version


def _faulty_weights(into: Path, fail_rate: float, delay_s: float) -> Path:
    """digits' weights as FaultyDigitsNet's: the same answers, with failures or a delay written into the artifact."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(ROOT / "examples/digits/artifacts/digits/1/model.safetensors")
    state |= {"fault_fail_rate": torch.tensor(fail_rate), "fault_delay_s": torch.tensor(delay_s)}
    save_file(state, into)
    return into


@pytest.fixture(scope="module")
def canary(fleet: Fleet, ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canary]:
    folder = tmp_path_factory.mktemp("rollout")
    digits = ROOT / "examples/digits/artifacts/digits/1/model.safetensors"
    artifacts = {
        "good": (digits, "DigitsNet"),
        "good-again": (digits, "DigitsNet"),
        "faulty": (_faulty_weights(folder / "faulty.safetensors", 0.2, 0.0), "FaultyDigitsNet"),
        "slow": (_faulty_weights(folder / "slow.safetensors", 0.0, 0.05), "FaultyDigitsNet"),
    }
    registry, versions = Registry(), {}
    try:
        for what, (weights, net) in artifacts.items():
            uri, sha256 = publish(str(weights))
            module = f"examples.digits.model:{net}"
            versions[what] = registry.register(
                MODEL, artifact_uri=uri, sha256=sha256, format="safetensors", module=module
            ).version
        registry.set_alias(MODEL, "champion", versions["good"])
    finally:
        registry.close()
    spec = yaml.safe_load((ROOT / "examples/digits/app.yaml").read_text())
    model = spec["models"][0]
    model.pop("version")
    model |= {
        "artifact": {"uri": f"models:/{MODEL}@champion"},
        "resources": {"num_cpus": 0.002},  # the session's Ray has little CPU left to reserve; load is what counts
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
    }
    spec |= {"name": APP, "route_prefix": f"/{APP}", "ingress": {"num_cpus": 0.002}}
    path = folder / "app.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    deployed = run_cli("deploy", str(path), "--address", ray_address)
    assert deployed.returncode == 0, deployed.stderr
    url = f"{fleet.ready()['proxy_url']}/{APP}/v2/models/digits/infer"
    yield Canary(path, url, ray_address, folder, versions)
    delete_app(ray_address, APP)


def _rollout(canary: Canary, *args: str) -> subprocess.CompletedProcess:
    return run_cli("rollout", *args, str(canary.spec), "--model", "digits", "--address", canary.address, timeout=300)


def _served_version(canary: Canary) -> str:
    answer = httpx.post(canary.url, json=PIXELS, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["model_version"]


def _status(canary: Canary) -> dict:
    """`rollout status --json`, as an operator reads it."""
    status = _rollout(canary, "status", "--json")
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)


def _stored() -> dict:
    """The newest rollout of the app's model as the store holds it (what `rollout status` reads, without Ray)."""
    from modelfleet.cli.rollout import _controller_alive

    registry = Registry()
    try:
        rollout = registry.rollout(APP, "digits")
        assert rollout is not None
        kinds = [e.kind for e in registry.rollout_events(rollout.id)]
    finally:
        registry.close()
    return {**rollout.model_dump(mode="json"), "kinds": kinds, "controller_alive": _controller_alive(rollout)}


def _load(canary: Canary, name: str) -> BackgroundLoad:
    return BackgroundLoad(canary.url, PIXELS, canary.folder / name, seconds=240, users=2)


def test_a_good_canary_steps_up_and_is_promoted_with_no_failed_request(canary: Canary) -> None:
    good = str(canary.versions["good"])
    assert _served_version(canary) == good
    load = _load(canary, "good")
    try:
        to = f"models:/{MODEL}/{canary.versions['good-again']}"
        done = _rollout(canary, "start", "--to", to, "--steps", "50,100", *LIMITS)
    finally:
        summary = load.stop()
    assert done.returncode == 0, done.stderr
    assert "promoted" in done.stderr, done.stderr
    assert summary["requests"] > 100 and summary["failures"] == 0, summary
    status = _status(canary)
    assert (status["state"], status["weight"]) == ("promoted", 100.0)
    kinds = [e["kind"] for e in status["events"]]
    assert kinds == ["started", "step", "passed", "step", "passed", "promoting", "promoted"], kinds
    assert _served_version(canary) == str(canary.versions["good-again"])
    registry = Registry()
    try:
        assert registry.get(f"{MODEL}@champion").version == canary.versions["good-again"], "the alias moved"
    finally:
        registry.close()


def test_a_canary_failing_a_fifth_of_its_requests_is_rolled_back_at_its_first_step(canary: Canary) -> None:
    baseline = _served_version(canary)
    load = _load(canary, "faulty")
    try:
        to = f"models:/{MODEL}/{canary.versions['faulty']}"
        limits = ["--interval", "5s", *LIMITS[2:]]  # the bound below grows with it; the time to react does not
        done = _rollout(canary, "start", "--to", to, "--steps", "20,50,100", *limits)
    finally:
        summary = load.stop()
    assert done.returncode == ROLLED_BACK, done.stderr
    status = _stored()
    assert status["state"] == "rolled_back" and "error rate" in status["reason"], status
    kinds = status["kinds"]
    assert kinds == ["started", "step", "rolled_back"], f"rolled back within its first step: {kinds}"
    # The failures callers saw: at most the first step's share x the failure rate x two intervals of traffic.
    bound = 0.20 * 0.20 * 2 * 5 * summary["rps"]
    assert 0 < summary["failures"] <= bound, (summary["failures"], bound, summary["errors"])
    assert _served_version(canary) == baseline


def test_a_shadow_that_fails_never_reaches_callers(canary: Canary) -> None:
    load = _load(canary, "shadow")
    try:
        to = f"models:/{MODEL}/{canary.versions['faulty']}"
        done = _rollout(canary, "start", "--to", to, "--strategy", "shadow", "--steps", "100", *LIMITS)
    finally:
        summary = load.stop()
    assert done.returncode == ROLLED_BACK and "error rate" in done.stderr, done.stderr
    assert summary["requests"] > 100 and summary["failures"] == 0, summary


def test_a_killed_rollout_command_is_carried_on_by_resume(canary: Canary) -> None:
    """The slow version again, its `rollout start` SIGKILLed at its first step: the split holds meanwhile, and
    `rollout resume` judges on from the stored step (and takes it back, as a live command would have)."""
    load = _load(canary, "resume")
    log = canary.folder / "killed.log"
    to = f"models:/{MODEL}/{canary.versions['slow']}"
    command = [sys.executable, "-m", "modelfleet", "rollout", "start", str(canary.spec), "--model", "digits"]
    command += ["--address", canary.address, "--to", to, "--steps", "50,100", *LIMITS]
    try:
        with log.open("wb") as out:
            killed = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_until(lambda: "step 1/2" in log.read_text(), 240, "the rollout's first step", killed, log)
        killed.send_signal(signal.SIGKILL)  # no word to the store: its heartbeat just stops
        killed.wait(timeout=30)
        stored = _status(canary)  # as an operator sees it: the stored rollout and each version's live tallies
        held = (stored["state"], stored["step"], stored["weight"], stored["controller_alive"])
        assert held == ("running", 0, 50.0, False), stored
        versions = stored["versions"]
        assert set(versions) == {stored["baseline_version"], str(canary.versions["slow"])}, versions
        assert all(v["requests"] > 0 and v["errors"] == 0 and v["p95_ms"] for v in versions.values()), versions
        served = {_served_version(canary) for _ in range(30)}  # the candidate still answers its share
        assert served == {str(canary.versions["slow"]), stored["baseline_version"]}, served
        resumed = _rollout(canary, "resume")
    finally:
        summary = load.stop()
    assert resumed.returncode == ROLLED_BACK and "x the baseline's" in resumed.stderr, resumed.stderr
    assert summary["failures"] == 0, summary
    kinds = _stored()["kinds"]
    assert kinds == ["started", "step", "resumed", "step", "rolled_back"], kinds
