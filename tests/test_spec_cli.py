"""Bad specs exit 2 with one line naming the file, the field and the fix; good ones validate and build."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelfleet.cli import app
from serve_apps.spec import AppSpec, load_app_spec
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]

GOOD_MODEL = {
    "name": "echo",
    "format": "builtin",
    "module": "echo",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}


def _spec(**model_changes) -> str:
    model = {**GOOD_MODEL, **model_changes}
    return yaml.safe_dump({"name": "app", "models": [model]})


# (case id, file text, text the one-line error must contain)
BAD_SPECS = [
    ("not-yaml", "name: app\nmodels: [\n", "not valid YAML"),
    ("tabs-yaml", "name: app\n\tmodels: []\n", "line 2"),
    ("empty-file", "", "the file is empty; an app spec needs at least name and models (see examples/echo/app.yaml"),
    ("comments-only", "# to do\n", "the file is empty; an app spec needs at least name and models"),
    ("top-level-list", "- a\n- b\n", "expected a mapping with name: and models:, got a list"),
    ("unknown-top-key", yaml.safe_dump({"name": "app", "modles": [GOOD_MODEL]}), "modles: unknown key"),
    # Suggestions come from the keys of that level only (not a model's `module`), and the other problem is named.
    (
        "top-level-typo",
        yaml.safe_dump({"name": "app", "modles": [GOOD_MODEL]}),
        "modles: unknown key; did you mean 'models'? remove or rename it",
    ),
    (
        "top-level-typo-names-the-rest",
        yaml.safe_dump({"name": "app", "modles": [GOOD_MODEL]}),
        "(also: missing models)",
    ),
    (
        "model-key-at-top-level",
        yaml.safe_dump({"name": "app", "format": "builtin", "models": [GOOD_MODEL]}),
        "format: unknown key at this level (it is a key of models[]); move it there or remove it",
    ),
    (
        "other-problems-named",
        yaml.safe_dump(
            {"name": "app", "models": [{**GOOD_MODEL, "replicas": 2}, {**GOOD_MODEL, "name": "b", "format": 3}]}
        ),
        "models[0:echo].replicas: unknown key; did you mean 'autoscaling.",
    ),
    (
        "other-problems-named-in-line",
        yaml.safe_dump(
            {"name": "app", "models": [{**GOOD_MODEL, "replicas": 2}, {**GOOD_MODEL, "name": "b", "format": 3}]}
        ),
        "(also: models[1:b].format)",
    ),
    ("number-for-string", _spec(version=1), 'models[0:echo].version: expected a string, got 1; quote it: version: "1"'),
    ("bool-for-string", _spec(version=True), 'quote it: version: "true"'),
    ("no-models", yaml.safe_dump({"name": "app", "models": []}), "models: the list is empty; list at least one model"),
    ("no-inputs", _spec(inputs=[]), "models[0:echo].inputs: the list is empty; list at least one input"),
    ("mapping-for-list", yaml.safe_dump({"name": "app", "models": GOOD_MODEL}), "models: expected a list"),
    ("nothing-for-list", "name: app\nmodels:\n", "models: expected a list"),
    ("text-for-number", _spec(max_ongoing_requests="many"), "expected a whole number, got 'many'"),
    (
        "below-the-minimum",
        _spec(resources={"num_cpus": -1}),
        "models[0:echo].resources.num_cpus: got -1; use a number >= 0",
    ),
    ("list-for-mapping", _spec(resources=[1]), "models[0:echo].resources: expected a mapping"),
    ("unknown-model-key", _spec(replicas=3), "models[0:echo].replicas: unknown key"),
    ("missing-models", yaml.safe_dump({"name": "app"}), "models: required field is missing"),
    ("wrong-type", _spec(max_ongoing_requests="many"), "models[0:echo].max_ongoing_requests"),
    (
        "min-gt-max",
        _spec(autoscaling={"min_replicas": 3, "max_replicas": 1}),
        "min_replicas (3) is greater than max_replicas (1)",
    ),
    ("unknown-format", _spec(format="onnx"), "models[0:echo].format: got 'onnx'; expected one of"),
    ("pickle-refused", _spec(format="pickle", artifact={"uri": "m.pkl"}), "safetensors.torch.save_file"),
    ("unknown-scheme", _spec(format="torchscript", artifact={"uri": "ftp://host/m.pt"}), "unknown scheme 'ftp'"),
    ("artifact-required", _spec(format="torchscript"), "needs an artifact"),
    # No file to pin: the case is about the missing file, so it opts out of the pin.
    (
        "artifact-missing",
        _spec(format="torchscript", artifact={"uri": "nowhere/model.pt", "allow_unpinned_code": True}),
        "does not exist",
    ),
    (
        "bad-sha",
        _spec(format="torchscript", artifact={"uri": "m.pt", "sha256": "abc"}),
        "models[0:echo].artifact.sha256",
    ),
    (
        "bad-shape",
        _spec(inputs=[{"name": "x", "datatype": "FP32", "shape": [0, 3]}]),
        "models[0:echo].inputs[0:x].shape: dimensions must be positive",
    ),
    (
        "bad-datatype",
        _spec(inputs=[{"name": "x", "datatype": "FLOAT", "shape": [-1]}]),
        "inputs[0:x].datatype: got 'FLOAT'",
    ),
    ("bad-name", _spec(name="Digits!"), "models[0:Digits!].name: got 'Digits!'; names use lowercase"),
    (
        "module-malformed",
        _spec(format="safetensors", module="not a module", artifact={"uri": "m.safetensors"}),
        "package.module:Class",
    ),
    ("dup-models", yaml.safe_dump({"name": "app", "models": [GOOD_MODEL, GOOD_MODEL]}), "model names must be unique"),
    ("negative-cpus", _spec(resources={"num_cpus": -1}), "models[0:echo].resources.num_cpus"),
    (
        "accelerator-without-gpu",
        _spec(resources={"accelerator_type": "T4"}),
        "accelerator_type 'T4' needs num_gpus > 0",
    ),
    ("bad-pool-name", _spec(resources={"pool": "GPU pool"}), "models[0:echo].resources.pool"),
    ("bad-queue", _spec(max_queued_requests=-5), "models[0:echo].max_queued_requests"),
    # module: is imported (as a replica would) and must name something there, or a known builtin.
    (
        "class-not-in-module",
        _spec(format="python", module="examples.digits.model:DigitNet"),
        "models[0:echo].module: 'examples.digits.model' has no 'DigitNet'; it defines DigitsNet",
    ),
    (
        "class-not-in-module-suggests",
        _spec(format="python", module="examples.digits.model:DigitNet"),
        "did you mean 'DigitsNet'?",
    ),
    (
        "module-not-found",
        _spec(format="python", module="examples.digits.modle:DigitsNet"),
        "models[0:echo].module: cannot import 'examples.digits.modle' (ModuleNotFoundError: No module named "
        "'examples.digits.modle')",
    ),
    (
        "unknown-builtin",
        _spec(module="ecko"),
        "models[0:echo].module: unknown builtin 'ecko'; known: ['echo']; did you mean 'echo'?",
    ),
    ("model-named-like-modelfleets-own", _spec(name="standby"), "model name 'standby' is the name of modelfleet's own"),
]


@pytest.mark.parametrize("text,expected", [pytest.param(t, e, id=i) for i, t, e in BAD_SPECS])
def test_bad_spec_exits_2_with_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_the_standby_answers_only_for_cpu_models_with_no_replica_while_idle_and_reserves_its_cpus() -> None:
    def model(name: str, **changes) -> dict:
        return {**GOOD_MODEL, "name": name, "autoscaling": {"min_replicas": 0}, **changes}

    spec = AppSpec.model_validate(
        {
            "name": "app",
            "models": [
                model("idle"),
                model("always-on", autoscaling={"min_replicas": 1}),
                model("gpu", resources={"num_gpus": 1}),
            ],
            "standby": {"num_replicas": 2, "num_cpus": 0.25},
        }
    )
    assert [m.name for m in spec.standby_models()] == ["idle"]
    assert spec.cpus_at_start()["standby"] == 0.5
    without = AppSpec.model_validate({"name": "app", "models": [model("idle")]})
    assert without.standby_models() == [] and "standby" not in without.cpus_at_start()


@pytest.mark.parametrize(
    "fmt,program", [("torchscript", "a TorchScript program"), ("torch_export", "an exported program")]
)
def test_formats_carrying_code_need_a_pin_or_an_explicit_opt_out(tmp_path: Path, fmt: str, program: str) -> None:
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"stands in for the model")
    path = tmp_path / "app.yaml"
    path.write_text(_spec(format=fmt, artifact={"uri": "model.bin"}))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert f"{path}: models[0:echo]: format '{fmt}' carries code ({program} can call any ATen op" in line, line
    assert (
        "aten::from_file" in line and "`sha256sum model.bin`" in line and "artifact.allow_unpinned_code: true" in line
    )

    pin = hashlib.sha256(artifact.read_bytes()).hexdigest()
    for fixed in ({"uri": "model.bin", "sha256": pin}, {"uri": "model.bin", "allow_unpinned_code": True}):
        path.write_text(_spec(format=fmt, artifact=fixed))
        result = CliRunner().invoke(app, ["validate", str(path)])
        assert result.exit_code == 0, result.output


def test_a_multiplexed_family_carrying_code_can_only_opt_out(tmp_path: Path) -> None:
    family = {"format": "torchscript", "multiplex": {}, "artifact": {"uri": "s3://models/{model_id}/model.pt"}}
    path = tmp_path / "app.yaml"
    path.write_text(_spec(**family))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "cannot carry one sha256" in result.stderr, result.output
    assert "artifact.allow_unpinned_code: true" in result.stderr and "sha256sum" not in result.stderr
    family["artifact"]["allow_unpinned_code"] = True
    AppSpec.model_validate(yaml.safe_load(_spec(**family)))


def test_python_format_needs_no_pin() -> None:
    """format: python runs the installed module (code chosen by whoever installs packages); its artifact is data."""
    spec = _spec(format="python", module="tests.fixtures.tiny:Rendezvous", artifact={"uri": "s3://models/me.json"})
    assert AppSpec.model_validate(yaml.safe_load(spec)).models[0].artifact.sha256 is None


def _write_module(folder: Path, text: str) -> str:
    """A module file in `folder` under a name no other test imports (a failed import is not cached, a good one is)."""
    name = f"mf_test_{uuid.uuid4().hex[:12]}"
    (folder / f"{name}.py").write_text(text)
    return name


@pytest.mark.parametrize(
    "source, says",
    [
        ("class Net:\n    def predict(self, inputs)\n", "(SyntaxError: expected ':' ("),
        ("raise RuntimeError('needs a GPU\\nand more')\n", "(RuntimeError: needs a GPU and more)"),
        ("import mf_no_such_dependency\n", "(ModuleNotFoundError: No module named 'mf_no_such_dependency')"),
        ("class Other:\n    pass\n", "has no 'Net'; it defines Other"),
    ],
    ids=["syntax-error", "raises-on-import", "missing-dependency", "no-such-class"],
)
def test_a_module_that_does_not_import_is_one_line(tmp_path: Path, monkeypatch, source: str, says: str) -> None:
    monkeypatch.chdir(tmp_path)
    name = _write_module(tmp_path, source)
    Path("app.yaml").write_text(_spec(format="python", module=f"{name}:Net"))
    result = CliRunner().invoke(app, ["validate", "app.yaml"])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "app.yaml: models[0:echo].module: " in line and says in line, line


def test_modules_resolve_from_the_working_directory_as_in_the_replicas(tmp_path: Path, monkeypatch) -> None:
    """Ray puts the driver's working directory first on its workers' sys.path: a module there is found."""
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path) not in sys.path
    name = _write_module(tmp_path, "class Net:\n    def __init__(self, path, device): pass\n")
    Path("app.yaml").write_text(_spec(format="python", module=f"{name}:Net"))
    result = CliRunner().invoke(app, ["validate", "app.yaml"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path) not in sys.path  # the check leaves the CLI's own path as it was


@pytest.mark.parametrize(
    "command", [["validate"], ["build"], ["run"], ["deploy", "--address", "127.0.0.1:1"]], ids=lambda c: c[0]
)
def test_every_serving_command_checks_modules_before_ray(tmp_path: Path, environ_kept, command: list[str]) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(_spec(format="python", module="examples.digits.model:DigitNet"))
    result = CliRunner().invoke(app, [command[0], str(path), *command[1:]])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "models[0:echo].module: 'examples.digits.model' has no 'DigitNet'" in line, line


@pytest.mark.parametrize(
    "module", ["examples.digits.model:DigitNet", "examples.digits.modle:DigitsNet"], ids=["class", "module"]
)
def test_validate_and_the_replica_say_the_same(tmp_path: Path, module: str) -> None:
    """One function finds `module:` for both, so what validate says is what a replica would have said."""
    from serve_apps.loaders import LoadError, load_model

    path = tmp_path / "app.yaml"
    path.write_text(_spec(format="python", module=module))
    result = CliRunner().invoke(app, ["validate", str(path)])
    problem = result.stderr.strip().split("models[0:echo].module: ", 1)[1]
    with pytest.raises(LoadError) as replica:
        load_model(AppSpec.model_validate(yaml.safe_load(_spec(format="python", module=module))).models[0], None, "cpu")
    assert str(replica.value) == f"model 'echo': {problem}"


def test_non_utf8_and_missing_files(tmp_path: Path) -> None:
    binary = tmp_path / "app.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for path, expected in ((binary, "cannot read it"), (tmp_path / "absent.yaml", "file not found")):
        result = CliRunner().invoke(app, ["validate", str(path)])
        assert result.exit_code == 2 and expected in result.stderr, result.stderr


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    """Same contract through a real interpreter, as a script would see it."""
    path = tmp_path / "app.yaml"
    path.write_text(_spec(autoscaling={"min_replicas": 2, "max_replicas": 1}))
    proc = subprocess.run([sys.executable, "-m", "modelfleet", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "models[0:echo].autoscaling" in proc.stderr


@pytest.mark.parametrize(
    "spec",
    [
        "examples/fleet.yaml",
        "examples/digits/app.yaml",
        "examples/embeddings/app.yaml",
        "examples/echo/app.yaml",
        "examples/fraud/app.yaml",
    ],
)
def test_examples_validate(spec: str) -> None:
    result = CliRunner().invoke(app, ["validate", str(ROOT / spec)])
    assert result.exit_code == 0, result.output


def test_schema_is_the_app_spec_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == AppSpec.model_json_schema()
    model = schema["$defs"]["ModelSpec"]
    assert model["additionalProperties"] is False
    assert all("description" in field for field in model["properties"].values())


def test_build_writes_a_config_ray_accepts(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve_config.yaml"
    result = CliRunner().invoke(app, ["build", str(ROOT / "examples/fleet.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    config = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    (application,) = config.applications
    assert application.import_path == "serve_apps.build:app_builder"
    embedded = AppSpec.model_validate(application.args["spec"])
    assert {m.name for m in embedded.models} == {"digits", "embeddings", "echo"}
    assert all(m.artifact is None or m.artifact.uri.startswith("file:///") for m in embedded.models)


def test_build_says_which_files_and_code_of_this_machine_the_nodes_need(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"{}")
    digits = {
        **GOOD_MODEL,
        "name": "digits",
        "format": "safetensors",
        "module": "examples.digits.model:DigitsNet",
        "artifact": {"uri": "model.safetensors"},
        "resources": {"pool": "cpu"},
    }
    (tmp_path / "app.yaml").write_text(yaml.safe_dump({"name": "local", "models": [digits, GOOD_MODEL]}))
    result = run_cli("build", str(tmp_path / "app.yaml"), "-o", str(tmp_path / "serve_config.yaml"))
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert f"{tmp_path / 'model.safetensors'} models[0:digits].artifact.uri: every node of pool cpu" in said
    assert "examples.digits.model models[0:digits].module: every node of pool cpu" in said
    assert "s3://" in said and "runtime_env" in said
    assert "echo" not in said  # a builtin is modelfleet's own code


def test_build_of_an_app_with_nothing_local_says_nothing_more(tmp_path: Path) -> None:
    remote = {**GOOD_MODEL, "name": "minilm", "format": "sentence_transformers", "artifact": {"uri": "s3://b/m/"}}
    remote.pop("module")
    (tmp_path / "app.yaml").write_text(yaml.safe_dump({"name": "remote", "models": [remote, GOOD_MODEL]}))
    result = run_cli("build", str(tmp_path / "app.yaml"), "-o", str(tmp_path / "serve_config.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"wrote {tmp_path / 'serve_config.yaml'}"


def test_run_refuses_a_busy_port_before_starting_anything(environ_kept) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["run", str(ROOT / "examples/echo/app.yaml"), "--port", str(port)])
    assert result.exit_code == 2
    assert f"--port {port}: cannot listen there" in result.stderr and "pick another --port" in result.stderr


def test_batching_leaves_room_for_a_full_batch_unless_told_otherwise() -> None:
    batched = yaml.safe_load(_spec(batching={"max_batch_size": 64}))
    # One full batch running, the next one filling up meanwhile.
    assert AppSpec.model_validate(batched).models[0].max_ongoing_requests == 128
    batched["models"][0]["max_ongoing_requests"] = 8  # the user's explicit choice stands
    assert AppSpec.model_validate(batched).models[0].max_ongoing_requests == 8
    assert AppSpec.model_validate(yaml.safe_load(_spec())).models[0].max_ongoing_requests == 16


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["cluster", "render", "examples/clusters/aws.yaml", "--provider", "mars"],
            "'--provider': 'mars' is not one of",
        ),
        (["loadtest", "examples/echo/app.yaml", "--protocol", "v3"], "'--protocol': 'v3' is not one of 'v2', 'v1'"),
        (["run", "examples/echo/app.yaml", "--port", "eighty"], "Invalid value for '--port'"),
        # Out of range: the option and its bound, before anything starts (a spec that does not exist proves it).
        (["run", "examples/echo/app.yaml", "--port", "99999"], "'--port': Input should be less than or equal to 65535"),
        (["run", "nowhere.yaml", "--proxy-port", "-1"], "'--proxy-port': Input should be greater than or equal to 0"),
        (["build", "examples/echo/app.yaml", "--port", "0"], "'--port': Input should be greater than or equal to 1"),
        (["deploy", "nowhere.yaml", "--address", "127.0.0.1:1", "--port", "70000"], "'--port': Input should be less"),
        (
            ["loadtest", "nowhere.yaml", "--users", "10000000"],
            "'--users': Input should be less than or equal to 100000",
        ),
        (["loadtest", "nowhere.yaml", "--workers", "100000"], "'--workers': Input should be less than or equal to 128"),
        (["loadtest", "nowhere.yaml", "--batch-size", "999999"], "'--batch-size': Input should be less than or equal"),
        (["loadtest", "nowhere.yaml", "--spawn-rate", "-1"], "--spawn-rate -1.0: users started per second must be"),
        (["tune", "nowhere.yaml", "--slo-p95-ms", "50", "--users", "999999"], "'--users': Input should be less than"),
        (["tune", "nowhere.yaml", "--slo-p95-ms", "50", "--seed", "-1"], "'--seed': Input should be greater than or"),
        (["tune", "nowhere.yaml", "--slo-p95-ms", "50", "--batch-size", "999999"], "'--batch-size': Input should be"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    """As a bad spec: one line saying what and where, exit 2 (not click's usage box, and no traceback)."""
    result = run_cli(*args, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and says in lines[0], result.stderr


def test_choices_are_listed_in_help() -> None:
    result = run_cli("loadtest", "--help", timeout=60)
    assert result.returncode == 0 and "constant|ramp|step|spike" in result.stdout and "v2|v1" in result.stdout


def test_version_is_the_distributions() -> None:
    from importlib.metadata import version

    result = run_cli("--version", timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"modelfleet {version('modelfleet')}"


def test_run_says_when_a_batched_model_leaves_this_machines_cores_idle(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped embeddings example on a 2-core box: one replica of one torch thread, told rather than silent."""
    from modelfleet.cli.run import _note_idle_cores

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for example in ("digits", "fraud", "echo"):  # scaled out, light, or no torch: nothing to say
        _note_idle_cores(load_app_spec(ROOT / "examples" / example / "app.yaml"))
    assert capsys.readouterr().err == ""
    _note_idle_cores(load_app_spec(ROOT / "examples" / "embeddings" / "app.yaml"))
    note = capsys.readouterr().err
    assert "embeddings: at most 1 replica(s) of 1 torch thread(s)" in note and "2-core machine" in note, note
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user chose
    _note_idle_cores(load_app_spec(ROOT / "examples" / "embeddings" / "app.yaml"))
    assert capsys.readouterr().err == ""


def test_every_autoscaling_field_ray_serve_accepts_passes_through_to_it() -> None:
    """The spec is Ray Serve's autoscaling config, field for field: a field Ray adds shows up here first."""
    from ray.serve.config import AutoscalingConfig

    from serve_apps._spec_sections import AutoscalingSpec
    from serve_apps.build import deployment_options

    assert set(AutoscalingSpec.model_fields) == set(AutoscalingConfig.model_fields)
    spec = yaml.safe_load(_spec())
    spec["models"][0]["autoscaling"] = {
        "min_replicas": 0,
        "max_replicas": 3,
        "downscale_to_zero_delay_s": 5,
        "aggregation_function": "max",
        "upscaling_factor": 2.0,
        "policy": {"policy_function": "ray.serve.autoscaling_policy:default_autoscaling_policy"},
    }
    model = AppSpec.model_validate(spec).models[0]
    auto = deployment_options(model)["autoscaling_config"]
    config = AutoscalingConfig(**auto)  # Ray's own validation of what the deployment gets
    assert (config.downscale_to_zero_delay_s, config.upscaling_factor) == (5, 2.0)
    assert config.aggregation_function.value == "max" and config.min_replicas == 0
    assert config.policy.policy_function == "ray.serve.autoscaling_policy:default_autoscaling_policy"
