"""`modelfleet models` as a user runs it: register (artifacts published content-addressed, lineage recorded), list,
show, alias, history, lineage, delete; a refusal is one line and exit 2. The store under it: test_registry.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.fixture()
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose registry and artifact root live in this test's folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODELFLEET_REGISTRY_URL", "MODELFLEET_ARTIFACT_ROOT")}
    return {**env, "MODELFLEET_HOME": str(tmp_path / "home")}


def _models(env: dict[str, str], *args: str):
    return run_cli("models", *args, env=env, timeout=60)


def test_a_registered_version_is_published_by_content_and_read_back(home: dict[str, str], tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not really weights, but bytes with a hash")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    first = _models(
        home, "register", "digits", str(weights), "--format", "safetensors", "--metric", "accuracy=0.97",
        "--param", "epochs=20", "--tag", "team=vision", "--dataset", str(weights), "--json",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    version = json.loads(first.stdout)
    assert (version["name"], version["version"], version["sha256"]) == ("digits", 1, sha)
    assert version["artifact_uri"].endswith(f"/artifacts/sha256/{sha}/model.safetensors")
    assert Path(version["artifact_uri"].removeprefix("file://")).read_bytes() == weights.read_bytes()
    assert (version["metrics"], version["params"], version["tags"]) == (
        {"accuracy": 0.97},
        {"epochs": 20},
        {"team": "vision"},
    )
    again = json.loads(_models(home, "register", "digits", str(weights), "--format", "safetensors", "--json").stdout)
    assert again["version"] == 2 and again["artifact_uri"] == version["artifact_uri"], "same bytes, same artifact"
    lineage = json.loads(_models(home, "lineage", "digits/1", "--json").stdout)
    assert lineage["dataset"] == {"uri": str(weights), "sha256": sha}
    assert "register" in lineage["command"] and lineage["runtime"]["python"]
    assert lineage["code"]["commit"], "the checkout's commit"
    listed = json.loads(_models(home, "list", "--json").stdout)
    assert listed == [{"name": "digits", "latest": 2, "aliases": {}}]


def test_aliases_move_and_their_history_is_kept(home: dict[str, str], tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    for _ in range(2):
        assert _models(home, "register", "fraud", str(weights), "--format", "safetensors").returncode == 0
    assert _models(home, "alias", "fraud@champion", "1").returncode == 0
    assert _models(home, "alias", "fraud@champion", "2").returncode == 0
    shown = json.loads(_models(home, "show", "models:/fraud@champion", "--json").stdout)
    assert shown["version"] == 2 and shown["aliases"] == ["champion"]
    history = json.loads(_models(home, "history", "fraud", "--json").stdout)["aliases"]
    assert [(h["alias"], h["version"], h["end"] is None) for h in history] == [
        ("champion", 1, False),
        ("champion", 2, True),
    ]


def test_refusals_are_one_line_and_exit_2(home: dict[str, str], tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    assert _models(home, "register", "fraud", str(weights), "--format", "safetensors").returncode == 0
    assert _models(home, "alias", "fraud@champion", "1").returncode == 0
    for args, says in (
        (["delete", "fraud/1"], "models:/fraud/1 is aliased (champion): move or remove the alias first"),
        (["show", "fraud/7"], "model 'fraud' has no version 7"),
        (["show", "nobody"], "no model 'nobody' is registered"),
        (["alias", "fraud", "1"], "names no alias: NAME@ALIAS"),
        (["register", "fraud", str(tmp_path / "absent"), "--format", "safetensors"], "no such file or folder"),
        (["register", "fraud", str(weights), "--format", "safetensors", "--metric", "oops"], "expected KEY=VALUE"),
    ):
        result = _models(home, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], (args, result.stderr)
