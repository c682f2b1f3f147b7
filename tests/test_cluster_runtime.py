"""What a host needs beyond SSH and Python, installed by the rendered setup; and the version check `cluster up`
runs on every host (on a real multi-host cluster in test_onprem_cluster.py)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from cluster.render import render
from cluster.runtime import RUNTIME_VENV, VERSIONS_PROBE, Versions, mismatches, node_requirements, this_machine
from cluster.spec import load_cluster_spec
from tests.helpers import ROOT

EXAMPLES = ROOT / "examples" / "clusters"
LAUNCHED = ["onprem.yaml", "aws.yaml", "gcp.yaml", "azure.yaml"]


def _setup(path: Path) -> list[str]:
    return yaml.safe_load(render(load_cluster_spec(path), source=str(path)))["setup_commands"]


def test_every_requirement_is_pinned_to_this_machines_version() -> None:
    pins = {Requirement(line).name: Requirement(line) for line in node_requirements()}
    assert pins["ray"].extras == {"default", "serve"}, "a node runs Ray's dashboard agent and the launcher's side"
    for name in ("ray", "torch", "safetensors", "fastapi", "scikit-learn", "boto3", "google-cloud-storage"):
        (spec,) = pins[name].specifier
        assert spec.operator == "==" and spec.version == version(name).split("+")[0], pins[name]
    assert "pytest" not in pins and "modelfleet" not in pins  # no dev tools; the project's code ships with a deploy


@pytest.mark.parametrize("example", LAUNCHED)
def test_a_host_with_only_python_gets_ray_and_the_replicas_imports(tmp_path: Path, example: str) -> None:
    spec = yaml.safe_load((EXAMPLES / example).read_text())
    spec.setdefault("network", {"allowed_source_ranges": ["203.0.113.0/24"]})
    spec["setup_commands"] = ["echo mine"]
    path = tmp_path / example
    path.write_text(yaml.safe_dump(spec))
    commands = _setup(path)
    venv, install, on_path = commands[-4:-1]
    assert venv == f"test -x {RUNTIME_VENV}/bin/python || python3 -m venv {RUNTIME_VENV}"
    assert shlex.split(install)[:4] == [f"{RUNTIME_VENV}/bin/python", "-m", "pip", "install"]
    assert set(node_requirements()) <= set(shlex.split(install))
    assert ".modelfleet/venv/bin" in on_path and on_path.endswith(">> ~/.bashrc")
    assert commands[-1] == "echo mine", "the spec's own setup runs after modelfleet's"


def test_the_path_line_goes_into_bashrc_once_and_puts_the_venv_first(tmp_path: Path) -> None:
    """The rendered command itself, run twice in a real shell on a home of its own."""
    on_path = _setup(EXAMPLES / "onprem.yaml")[-1]
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    for _ in range(2):
        subprocess.run(["bash", "-c", on_path], env=env, check=True)
    bashrc = (tmp_path / ".bashrc").read_text()
    assert len(bashrc.splitlines()) == 1, bashrc
    found = subprocess.run(["bash", "-c", f"source {tmp_path}/.bashrc; echo $PATH"], env=env, capture_output=True)
    assert found.stdout.decode().startswith(f"{tmp_path}/.modelfleet/venv/bin:"), found.stdout


@pytest.mark.parametrize(
    "change", [{"image": "rayproject/ray:2.60.0-py311"}, {"install_runtime": False}], ids=["image", "off"]
)
def test_an_image_or_install_runtime_false_installs_nothing(tmp_path: Path, change: dict) -> None:
    spec = {**yaml.safe_load((EXAMPLES / "aws.yaml").read_text()), **change}
    spec.setdefault("network", {"allowed_source_ranges": ["203.0.113.0/24"]})
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert not any(RUNTIME_VENV in command for command in _setup(path))


def test_the_probe_reads_the_ray_the_login_shell_finds_and_its_python(tmp_path: Path) -> None:
    """Run as `cluster up` runs it on each host: here, on this machine's Ray."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    said = subprocess.run(["bash", "-c", VERSIONS_PROBE], env=env, capture_output=True, text=True, timeout=120)
    here = this_machine()
    assert said.stdout.split() == ["versions", here.ray, here.python], said.stdout + said.stderr


def test_a_ray_without_a_python_says_so_rather_than_a_version(tmp_path: Path) -> None:
    fake = tmp_path / "ray"
    fake.write_text("#!/bin/sh\necho not ray\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    said = subprocess.run(["bash", "-c", VERSIONS_PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert said.returncode != 0 and "versions" not in said.stdout


def test_mismatches_follow_rays_own_rule_and_name_each_host() -> None:
    head = Versions("2.60.0", "3.11.7")
    assert mismatches(head, {"10.0.0.11": head}, head) == []
    problems = mismatches(
        head,
        {"10.0.0.11": Versions("2.60.0", "3.11.2"), "10.0.0.12": Versions("2.59.0", "3.11.7"), "10.0.0.13": "timeout"},
        Versions("2.60.0", "3.11.9"),  # this machine: another patch level is fine, it runs no Ray of the cluster's
    )
    assert problems == [
        "10.0.0.11 runs Ray 2.60.0 on Python 3.11.2, the head Ray 2.60.0 on Python 3.11.7",
        "10.0.0.12 runs Ray 2.59.0 on Python 3.11.7, the head Ray 2.60.0 on Python 3.11.7",
        "10.0.0.13: cannot read its Ray and Python (timeout)",
    ]
    assert mismatches(head, {}, Versions("2.60.0", "3.12.1")) == [
        "this machine runs Ray 2.60.0 on Python 3.12.1, the head Ray 2.60.0 on Python 3.11.7"
    ]
