"""`models:/NAME@ALIAS` and `models:/NAME/VERSION` in app specs, as a user meets them: `validate` and `build` pin
the reference to what the registry holds when they read the spec (URI, sha256, version), a reference the registry
or the spec cannot honour is one line and exit 2, and `build` is recorded. Serving a pinned model: test_serving.py
(the session fleet's `sleepy`); the store's deployment records: test_registry.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelfleet.cli import app
from registry import Registry, publish
from tests.helpers import ROOT

DIGITS = ROOT / "examples/digits/artifacts/digits/1/model.safetensors"


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A registry of this test's own (the commands find it through MODELFLEET_HOME), with digits registered twice
    (different bytes) and digits@champion -> 1."""
    home = tmp_path / "home"
    monkeypatch.setenv("MODELFLEET_HOME", str(home))
    monkeypatch.delenv("MODELFLEET_REGISTRY_URL", raising=False)
    monkeypatch.delenv("MODELFLEET_ARTIFACT_ROOT", raising=False)
    home.mkdir()
    retrained = tmp_path / "retrained" / "model.safetensors"
    retrained.parent.mkdir()
    retrained.write_bytes(DIGITS.read_bytes() + b" ")  # another sha256; safetensors ignores trailing bytes
    store = Registry()
    for weights in (DIGITS, retrained):
        uri, sha256 = publish(str(weights))
        store.register(
            "digits", artifact_uri=uri, sha256=sha256, format="safetensors", module="examples.digits.model:DigitsNet"
        )
    store.set_alias("digits", "champion", 1)
    yield store
    store.close()


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _spec(tmp_path: Path, **model: object) -> Path:
    spec = yaml.safe_load((ROOT / "examples/digits/app.yaml").read_text())
    spec["models"][0].pop("version")
    spec["models"][0]["artifact"] = {"uri": "models:/digits@champion"}
    spec["models"][0].update(model)
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _built_model(config: Path) -> dict:
    return yaml.safe_load(config.read_text())["applications"][0]["args"]["spec"]["models"][0]


def test_build_pins_the_alias_until_the_spec_is_read_again(registry: Registry, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert _cli("validate", str(spec)).exit_code == 0
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    built = _cli("build", str(spec), "-o", str(first))
    assert built.exit_code == 0, built.output
    v1, v2 = registry.get("digits/1"), registry.get("digits/2")
    model = _built_model(first)
    assert (model["version"], model["artifact"]["uri"], model["artifact"]["sha256"]) == (
        "1",
        v1.artifact_uri,
        v1.sha256,
    )
    assert model["artifact"]["registered_as"] == "models:/digits@champion"

    registry.set_alias("digits", "champion", 2)
    assert _built_model(first)["version"] == "1", "what was built stays as it was"
    assert _cli("build", str(spec), "-o", str(second)).exit_code == 0
    model = _built_model(second)
    assert (model["version"], model["artifact"]["sha256"]) == ("2", v2.sha256)
    assert [(d.app, d.version, d.target, d.outcome) for d in registry.deployments("digits")] == [
        ("digits", 1, f"serve-config:{first.resolve()}", "built"),
        ("digits", 2, f"serve-config:{second.resolve()}", "built"),
    ]
    assert _cli("models", "delete", "digits/1").exit_code == 0, "a built config is no deployment"


@pytest.mark.parametrize(
    ("model", "field", "says"),
    [
        ({"artifact": {"uri": "models:/digits@canary"}}, "artifact.uri", "model 'digits' has no alias 'canary'"),
        ({"artifact": {"uri": "models:/digits/7"}}, "artifact.uri", "model 'digits' has no version 7"),
        ({"artifact": {"uri": "models:/fraud/1"}}, "artifact.uri", "no model 'fraud' is registered"),
        ({"artifact": {"uri": "models:/digits"}}, "artifact.uri", "models:/NAME/VERSION or models:/NAME@ALIAS"),
        ({"format": "torchscript", "module": None}, "format", "a safetensors artifact; set format: safetensors"),
        ({"module": "examples.fraud.model:FraudNet"}, "module", "set module: examples.digits.model:DigitsNet"),
        ({"version": "3"}, "version", "models:/digits@champion is version 1, the spec says '3'"),
        ({"artifact": {"uri": "models:/digits/1", "sha256": "0" * 64}}, "artifact.sha256", "has sha256"),
    ],
)
def test_a_reference_the_registry_or_spec_cannot_honour_is_one_line(
    registry: Registry, tmp_path: Path, model: dict, field: str, says: str
) -> None:
    spec = _spec(tmp_path, **model)
    refused = _cli("validate", str(spec))
    assert refused.exit_code == 2, refused.output
    (line,) = [line for line in refused.stderr.splitlines() if line.strip()]
    assert str(spec) in line and f"models[0:digits].{field}" in line and says in line, line


def test_a_version_registered_with_reference_data_gives_drift_its_reference(registry: Registry, tmp_path: Path) -> None:
    """`models register --reference-data` profiles the data and publishes the profile with the version; a spec's
    `drift:` without a reference, on a models:/ reference, gets that profile when the spec is read."""
    data = tmp_path / "train.csv"
    data.write_text("pixels_sum,kind\n" + "".join(f"{i % 17}.5,{'ab'[i % 2]}\n" for i in range(300)))
    registered = _cli(
        "models", "register", "digits", str(DIGITS), "--format", "safetensors",
        "--module", "examples.digits.model:DigitsNet", "--reference-data", str(data), "--json",
    )  # fmt: skip
    assert registered.exit_code == 0, registered.output
    reference = registry.get("digits/3").lineage["reference"]
    assert reference["rows"] == 300 and reference["features"] == ["kind", "pixels_sum"], reference
    registry.set_alias("digits", "champion", 3)
    built = tmp_path / "built.yaml"
    result = _cli("build", str(_spec(tmp_path, drift={"window_rows": 100})), "-o", str(built))
    assert result.exit_code == 0, result.output
    drift = _built_model(built)["drift"]
    assert drift["reference"] == reference["uri"] and drift["window_rows"] == 100

    registry.set_alias("digits", "champion", 1)  # registered without reference data
    refused = _cli("validate", str(_spec(tmp_path, drift={})))
    assert refused.exit_code == 2 and "drift.reference" in refused.stderr and "--reference-data" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
