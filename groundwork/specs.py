"""Spec files: a strict pydantic base, and reading a YAML file into a model with one-line errors.

Every room's spec (apps, clusters, and those to come) loads through
`load_spec_file`: any problem becomes a `SpecError` whose message names the
file, the field path (with item names, e.g. `models[0:digits].autoscaling`)
and the fix; the CLI prints it and exits 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["SpecError", "Strict", "load_spec_file"]


class Strict(BaseModel):
    """A spec section: unknown keys are errors (usually typos), never silently ignored."""

    model_config = ConfigDict(extra="forbid")


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


def _explain(err: Mapping[str, Any], known_keys: list[str], schema_command: str) -> str:
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


def load_spec_file(path: str | Path, model: type[Spec], shape: str, known_keys: list[str], schema_command: str) -> Spec:
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
