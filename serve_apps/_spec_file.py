"""Reading an app spec file, and explaining what is wrong with it in one line.

Every problem becomes a `SpecError` whose message names the file, the field
path (with model names, e.g. `models[0:digits].autoscaling`) and the fix.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from providers.storage import resolve_uri, scheme_of

from .spec import (
    AppSpec,
    ArtifactSpec,
    AutoscalingSpec,
    BatchingSpec,
    IngressSpec,
    ModelSpec,
    MultiplexSpec,
    PipelineSpec,
    PipelineStep,
    ResourcesSpec,
    TensorSpec,
)

__all__ = ["SpecError", "check_artifacts_exist", "load_app_spec", "load_spec_file"]


class SpecError(Exception):
    """A spec that cannot be used; the message is one line naming file, field and fix."""

    def __init__(self, path: Path | str, field: str, problem: str):
        self.path, self.field, self.problem = str(path), field, problem
        where = f"{self.path}: {field}" if field else self.path
        super().__init__(f"{where}: {problem}")


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """'models[0].autoscaling' from pydantic's loc, using model names where we can."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict) and "name" in node[item]:
                label = f"[{item}:{node[item]['name']}]"
            parts.append(label)
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            if item in ("function-after", "function-before") or str(item).startswith(("function-", "union")):
                continue
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def _all_field_names() -> list[str]:
    models = (
        AppSpec, ModelSpec, IngressSpec, ArtifactSpec, TensorSpec, ResourcesSpec, AutoscalingSpec, BatchingSpec,
        MultiplexSpec, PipelineSpec, PipelineStep,
    )
    return sorted({name for model in models for name in model.model_fields})


def _explain(err: dict[str, Any], known_keys: list[str], schema_command: str) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), known_keys, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key; {hint}remove or rename it (`{schema_command}` lists the keys)"
    if kind == "missing":
        return "required field is missing; add it"
    if kind == "string_pattern_mismatch" and err["loc"][-1] == "name" and "tensor" not in msg:
        return (
            f"got {err.get('input')!r}; names use lowercase letters, digits, '-' and '_', "
            "start and end with a letter or digit, at most 63 characters"
        )
    msg = msg.removeprefix("Value error, ")
    if kind == "enum" and "expected" in err.get("ctx", {}):
        return f"got {err.get('input')!r}; expected one of {err['ctx']['expected']}"
    if "input" in err and kind not in ("value_error", "assertion_error") and not isinstance(err["input"], (dict, list)):
        return f"{msg} (got {err['input']!r})"
    return msg


Spec = TypeVar("Spec", bound=BaseModel)


def load_spec_file(
    path: str | Path, model: type[Spec], shape: str, known_keys: list[str], schema_command: str,
) -> Spec:
    """Read a YAML spec file into `model`; raise SpecError with one clear line on any problem.

    `shape` says what the top level should be ("a mapping with name: and models:");
    `known_keys` feed "did you mean" for unknown keys; `schema_command` lists them all.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, "", "file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(path, "", f"cannot read it ({exc.__class__.__name__}: {exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(path, where, f"not valid YAML ({problem}); fix the syntax there") from None
    if not isinstance(data, dict):
        raise SpecError(path, "", f"expected {shape}, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # An unknown key is usually a typo that also explains any "missing" error: report it first.
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        field = _field_path(tuple(err["loc"]), data)
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise SpecError(path, field, _explain(err, known_keys, schema_command) + more) from None


def load_app_spec(path: str | Path) -> AppSpec:
    """Read and validate an app spec; raise SpecError with one clear line on any problem."""
    spec = load_spec_file(path, AppSpec, "a mapping with name: and models:", _all_field_names(), "modelfleet schema")
    spec._base_dir = Path(path).resolve().parent
    return spec


def check_artifacts_exist(spec: AppSpec, path: Path | str) -> None:
    """Local artifacts must exist at validate time; remote ones are checked when fetched."""
    for i, model in enumerate(spec.models):
        if model.artifact is None or scheme_of(model.artifact.uri) != "file":
            continue
        if model.multiplex is not None and model.multiplex.example_id is None:
            continue  # a family's ids are only known at request time
        uri = model.artifact_uri(model.multiplex.example_id if model.multiplex else None)
        local = Path(resolve_uri(uri, spec.base_dir).removeprefix("file://"))
        if not local.exists():
            hint = "run the example's train.py first, or fix the path (plain paths are relative to the spec's folder)"
            raise SpecError(path, f"models[{i}:{model.name}].artifact.uri", f"{local} does not exist; {hint}")

