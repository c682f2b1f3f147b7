"""What each model format needs is one record (`serve_apps.loaders.traits`); the spec, loaders and tuner follow it.

The specs here are built from the records, not from format names, so a new
format is checked by these tests as soon as it has a record.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from loadtests.search import embeddable, tunable
from serve_apps.loaders import (
    CONVERSION_HINT,
    PICKLE_HINT,
    FormatTraits,
    LoadError,
    known_formats,
    load_model,
    refusal,
    traits,
)
from serve_apps.spec import AppSpec, ModelFormat, ModelSpec
from tests.helpers import ROOT

FORMATS = [f.value for f in ModelFormat]
PIN = "0" * 64
TENSORS = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}


def _model(fmt: str, **changes: Any) -> dict[str, Any]:
    """The least a model of format `fmt` needs, read from its record; `changes` on top (None removes a field)."""
    needs = traits(fmt)
    model: dict[str, Any] = {"name": "m", "format": fmt, **TENSORS}
    if needs.artifact_required:
        model["artifact"] = {"uri": "weights/" if needs.artifact == "folder" else "model.bin", "sha256": PIN}
    if needs.needs_module:
        model["module"] = {"class": "tests.fixtures.tiny:TinyNet", "builtin": "echo"}[needs.module]
    if needs.calls_models:
        model["pipeline"] = {"steps": [{"model": "step"}]}
    model.update(changes)
    return {k: v for k, v in model.items() if v is not None}


def _app(model: dict[str, Any]) -> dict[str, Any]:
    """An app holding `model` and the echo its pipeline (if any) calls."""
    step = {"name": "step", "format": "builtin", "module": "echo", **TENSORS}
    return {"name": "app", "models": [model, step]}


def _refusal(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        ModelSpec.model_validate(data)
    return str(info.value)


# ---- the records ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_has_a_record(fmt: str) -> None:
    needs = traits(fmt)
    assert isinstance(needs, FormatTraits)
    assert ModelSpec.model_validate(_model(fmt)).format.value == fmt  # the record says enough to make a valid spec


def test_every_loader_declares_its_record_and_every_loader_is_a_format() -> None:
    for fmt in known_formats():
        module = importlib.import_module(f"serve_apps.loaders.{fmt}")
        assert module.TRAITS is traits(fmt) and callable(module.load), fmt
        # What `module:` names is found by the loader's own resolve, which validate calls before Ray starts.
        assert callable(getattr(module, "resolve", None)) == traits(fmt).needs_module, fmt
    assert set(known_formats()) <= set(FORMATS)
    assert all(traits(f).calls_models for f in set(FORMATS) - set(known_formats())), "only pipelines load nothing"


def test_records_are_consistent() -> None:
    with pytest.raises(ValueError, match="cannot require"):
        FormatTraits(artifact="none", artifact_required=True)
    for fmt in FORMATS:
        needs = traits(fmt)
        assert not (needs.calls_models and (needs.artifact_required or needs.needs_module or needs.may_embed)), fmt


def test_reading_the_records_and_validating_loads_no_model_library() -> None:
    """The spec asks the records while it validates: that must stay as light as the spec itself."""
    code = (
        "import sys\n"
        "from serve_apps.loaders import traits\n"
        "from serve_apps.spec import ModelFormat, load_app_spec\n"
        "[traits(f.value) for f in ModelFormat]\n"
        "[load_app_spec(p) for p in sys.argv[1:]]\n"
        "print(sorted({'numpy', 'torch', 'safetensors', 'sentence_transformers', 'ray'} & set(sys.modules)))\n"
    )
    examples = [str(p) for p in sorted((ROOT / "examples").glob("*/app.yaml"))]
    out = subprocess.run([sys.executable, "-c", code, *examples], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


# ---- the spec follows the records -------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_artifact_is_asked_for_exactly_where_the_record_requires_one(fmt: str) -> None:
    data = _model(fmt, artifact=None)
    if traits(fmt).artifact_required:
        assert f"format {fmt!r} needs an artifact: add artifact: {{uri: ...}}" in _refusal(data)
    else:
        ModelSpec.model_validate(data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_module_is_asked_for_exactly_where_the_record_needs_one(fmt: str) -> None:
    needs = traits(fmt)
    data = _model(fmt, module=None)
    if needs.needs_module:
        hint = "a builtin name, e.g. echo" if needs.module == "builtin" else "'package.module:Class'"
        assert f"format {fmt!r} needs module: {hint}" in _refusal(data)
    else:
        ModelSpec.model_validate(data)
    if needs.module == "class":
        assert "module 'not a module' must look like 'package.module:Class'" in _refusal(
            _model(fmt, module="not a module")
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_carrying_code_need_a_pin(fmt: str) -> None:
    needs = traits(fmt)
    if needs.artifact == "none":
        return
    unpinned = _model(fmt, artifact={"uri": "model.bin"})
    if needs.carries_code:
        assert f"format {fmt!r} carries code ({needs.program} can call any ATen op" in _refusal(unpinned)
        ModelSpec.model_validate(_model(fmt, artifact={"uri": "model.bin", "allow_unpinned_code": True}))
    else:
        ModelSpec.model_validate(unpinned)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_pipeline_section_goes_with_the_formats_that_call_models(fmt: str) -> None:
    together = "format: pipeline and a pipeline: section go together"
    if traits(fmt).calls_models:
        assert together in _refusal(_model(fmt, pipeline=None))
        assert not tunable(ModelSpec.model_validate(_model(fmt)))
    else:
        assert together in _refusal(_model(fmt, pipeline={"steps": [{"model": "step"}]}))
        assert tunable(ModelSpec.model_validate(_model(fmt)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_embedding_follows_the_record(fmt: str) -> None:
    data = _model(fmt, embedded=True)
    if traits(fmt).may_embed:
        ModelSpec.model_validate(data)
    else:
        assert f"embedded: a {fmt} needs a deployment of its own; remove embedded: true" in _refusal(data)


def test_pickles_are_refused_with_the_one_conversion_hint() -> None:
    assert CONVERSION_HINT in PICKLE_HINT and "safetensors.torch.save_file" in CONVERSION_HINT
    for name in ("pickle", "PKL", "joblib", "torch", "pt"):
        assert f"format {name!r} is refused" in _refusal(_model("safetensors", format=name))
        assert refusal(name).endswith(CONVERSION_HINT)
    assert all(refusal(fmt) is None for fmt in FORMATS)


# ---- the loaders follow the records ----------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in known_formats() if traits(f).artifact_required])
def test_a_required_artifact_is_checked_before_loading(fmt: str) -> None:
    spec = ModelSpec.model_validate(_model(fmt))
    with pytest.raises(LoadError, match=f"needs an artifact {traits(fmt).artifact}, got none"):
        load_model(spec, None, "cpu")


# ---- the tuner's embeddable rule is the spec's -------------------------------------

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "pool": {"resources": {"pool": "cpu"}},
    "gpu": {"resources": {"num_gpus": 1}},
    "accelerator": {"resources": {"num_gpus": 1, "accelerator_type": "T4"}},
    "memory": {"resources": {"memory_mb": 512}},
    "queue": {"max_queued_requests": 8},
    "scaled": {"autoscaling": {"min_replicas": 0, "max_replicas": 3}},  # the tuner resets it, so no obstacle
    "family": {"artifact": {"uri": "m/{model_id}/model.bin", "allow_unpinned_code": True}, "multiplex": {}},
}


def _valid_variants() -> list:
    """(format, variant) pairs that make a valid app: the others (a multiplexed pipeline) have nothing to compare."""
    pairs = []
    for fmt in FORMATS:
        for variant in sorted(VARIANTS):
            try:
                AppSpec.model_validate(_app(_model(fmt, **VARIANTS[variant])))
            except ValidationError:
                continue
            pairs.append(pytest.param(fmt, variant, id=f"{fmt}-{variant}"))
    return pairs


@pytest.mark.parametrize("fmt,variant", _valid_variants())
def test_the_tuner_proposes_embedding_exactly_where_the_spec_allows_it(fmt: str, variant: str) -> None:
    data = _app(_model(fmt, **VARIANTS[variant]))
    app = AppSpec.model_validate(data)
    for model in app.models:  # the step too: a pipeline's step cannot be embedded
        embedded = json.loads(json.dumps(data))
        target = next(m for m in embedded["models"] if m["name"] == model.name)
        target.update(embedded=True)
        target.pop("autoscaling", None)  # as apply_knobs does
        try:
            AppSpec.model_validate(embedded)
            allowed = True
        except ValidationError:
            allowed = False
        assert embeddable(app, model) == allowed, (fmt, variant, model.name)
