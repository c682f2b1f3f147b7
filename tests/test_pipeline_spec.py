"""Pipeline wiring and multiplexed families are checked with the spec: exit 2, one line, the field and the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelfleet.cli import app
from tests.helpers import ROOT

FRAUD = ROOT / "examples" / "fraud" / "app.yaml"


def _fraud() -> dict:
    spec = yaml.safe_load(FRAUD.read_text())
    for model in spec["models"]:
        if "artifact" in model:
            model["artifact"]["uri"] = str(FRAUD.parent / model["artifact"]["uri"])
    return spec


def _model(spec: dict, name: str) -> dict:
    return next(m for m in spec["models"] if m["name"] == name)


def _steps(spec: dict) -> list[dict]:
    return _model(spec, "fraud")["pipeline"]["steps"]


def _unknown_step(s):
    _steps(s).append({"model": "nowhere"})


def _ambiguous(s):
    _steps(s)[3]["inputs"] = {}  # mlp_score/lr_score now come from... nothing named so; scorers both say `score`


def _wrong_dtype(s):
    _steps(s)[3]["inputs"]["mlp_score"] = "hour"  # INT64 request input into an FP32 input


def _later_step(s):
    _steps(s)[1]["inputs"] = {"features": "scorer_lr.contributions"}  # scorer_lr comes after scorer_mlp


def _cycle(s):
    outer = {**copy.deepcopy(_model(s, "fraud")), "name": "outer"}
    outer["pipeline"] = {"steps": [{"model": "fraud"}]}
    s["models"].append(outer)
    _steps(s).append({"model": "outer"})


def _pipeline_with_artifact(s):
    _model(s, "fraud")["artifact"] = {"uri": "x.safetensors"}


def _step_family(s):
    _steps(s).append({"model": "merchant"})


def _family_without_template(s):
    _model(s, "merchant")["artifact"]["uri"] = str(FRAUD.parent / "artifacts/merchants/m001/model.safetensors")


def _template_without_family(s):
    del _model(s, "merchant")["multiplex"]


def _family_with_sha(s):
    _model(s, "merchant")["artifact"]["sha256"] = "0" * 64


def _bad_example_id(s):
    _model(s, "merchant")["multiplex"]["example_id"] = "../etc"


def _missing_example(s):
    _model(s, "merchant")["multiplex"]["example_id"] = "m999"


def _ambiguous_output(s):
    _model(s, "fraud")["outputs"].append({"name": "score", "datatype": "FP32", "shape": [-1]})


CASES = [
    (_unknown_step, "models[fraud].pipeline.steps[4].model: no model 'nowhere' in this app"),
    (_ambiguous, "steps[3].inputs.mlp_score: nothing named 'mlp_score'"),
    (_wrong_dtype, "steps[3].inputs.mlp_score: 'hour' does not fit (datatype INT64 cannot feed FP32)"),
    (
        _later_step,
        "steps[1].inputs.features: 'scorer_lr.contributions' is neither a request input nor an earlier step's output",
    ),
    (_cycle, "models[fraud].pipeline: pipelines call each other in a cycle (fraud -> outer -> fraud); break it"),
    (_pipeline_with_artifact, "do not apply to it"),
    (_step_family, "'merchant' is a multiplexed family, which cannot be a pipeline step yet"),
    (_family_without_template, "multiplex needs artifact.uri to contain {model_id}"),
    (_template_without_family, "add multiplex: {max_models_per_replica: N}"),
    (_family_with_sha, "one sha256 cannot match every model"),
    (_bad_example_id, "multiplex.example_id"),
    (_missing_example, "m999/model.safetensors does not exist"),
    (_ambiguous_output, "outputs.score: 'score' is ambiguous; map it to scorer_mlp.score or scorer_lr.score"),
]


@pytest.mark.parametrize("change,expected", [pytest.param(c, e, id=c.__name__.strip("_")) for c, e in CASES])
def test_bad_pipeline_or_family_exits_2_with_one_clear_line(tmp_path: Path, change, expected: str) -> None:
    spec = _fraud()
    change(spec)
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0], result.stderr
    assert expected in lines[0], lines[0]


def test_the_fraud_example_validates_and_plans_concurrent_scorers() -> None:
    from serve_apps.graph import plan_pipeline
    from serve_apps.spec import load_app_spec

    spec = load_app_spec(FRAUD)
    plan = plan_pipeline(spec.model("fraud"), {m.name: m for m in spec.models})
    deps = {step.model: step.depends_on() for step in plan.steps}
    assert deps == {
        "featurizer": set(),
        "scorer_mlp": {"featurizer"},
        "scorer_lr": {"featurizer"},
        "ensemble": {"scorer_mlp", "scorer_lr"},
    }
    assert plan.outputs["mlp_score"].step == "scorer_mlp" and plan.outputs["fraud_probability"].step == "ensemble"
