"""Spec files: a strict pydantic base, and reading a YAML file into a model with one-line errors.

Every room's spec (apps, clusters, and those to come) loads through
`load_spec_file`: any problem becomes a `SpecError` whose message names the
file, the field path (with item names, e.g. `models[0:digits].autoscaling`)
and the fix; the CLI prints it and exits 2. What a key may be is read from the
model itself, so a suggestion only ever names a key that is valid where it is
suggested.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

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


def _is_wrapper(item: Any) -> bool:
    """pydantic's loc names validator wrappers ('function-after[...]') and union branches; they are not fields."""
    return isinstance(item, str) and item.startswith(("function-", "union"))


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
        elif not _is_wrapper(item):
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


# ---- the spec's own shape: which keys are valid where ----------------------------------------------


def _section(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The section a field holds, through Optional, lists and dicts, and how its path reads ('[]' per list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin = get_origin(annotation)
    for arg in get_args(annotation):
        inner, suffix = _section(arg)
        if inner is not None:
            container = "[]" if origin in (list, tuple, set) else "{}" if origin is dict else ""
            return inner, container + suffix
    return None, ""


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path of the section, key) for every key of `model` and of the sections within it."""
    for name, field in model.model_fields.items():
        yield prefix, name
        inner, suffix = _section(field.annotation)
        if inner is not None and inner is not model:
            yield from _keys(inner, f"{prefix}.{name}{suffix}" if prefix else f"{name}{suffix}")


def _section_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section (model class) that pydantic's `loc` points into; None where it is not one."""
    node, containers = model, 0
    for item in loc:
        if _is_wrapper(item):
            continue
        if containers:  # a list index or a dict key
            containers -= 1
            continue
        field = node.model_fields.get(str(item))
        inner, suffix = _section(field.annotation) if field is not None else (None, "")
        if inner is None:
            return None
        node, containers = inner, suffix.count("[]") + suffix.count("{}")
    return None if containers else node


def _unknown_key(model: type[BaseModel], loc: tuple[Any, ...], schema_command: str) -> str:
    key, listing = str(loc[-1]), f"(`{schema_command}` lists the keys)"
    section = _section_at(model, tuple(loc[:-1]))
    if section is None:
        return f"unknown key; remove or rename it {listing}"
    here = [k for path, k in _keys(section) if not path]
    close = difflib.get_close_matches(key, here, n=1)
    if close:  # a typo of a key of this level
        return f"unknown key; did you mean {close[0]!r}? remove or rename it {listing}"
    elsewhere = list(dict.fromkeys(path or "the top level" for path, k in _keys(model) if k == key))
    if elsewhere:  # a key of another level: the shallowest ones (`format` is a model's, before a sub-section's)
        depth = min(path.count(".") for path in elsewhere)
        nearest = [path for path in elsewhere if path.count(".") == depth]
        return f"unknown key at this level (it is a key of {', '.join(nearest[:3])}); move it there or remove it"
    below = {f"{path}.{k}": k for path, k in _keys(section) if path}
    close = difflib.get_close_matches(key, list(below.values()), n=1)
    if close:  # a key of a section within this one, written without the section
        nested = next(path for path, k in below.items() if k == close[0])
        return f"unknown key; did you mean {nested!r}? move it there or remove it {listing}"
    return f"unknown key; remove or rename it {listing}"


# ---- one line per problem -------------------------------------------------------------------------


def _got(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "true" if value is True else "false" if value is False else repr(value)


_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list (one '- ' line per item)",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
}
_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


def _explain(err: Mapping[str, Any], model: type[BaseModel], schema_command: str) -> str:
    kind, msg, ctx, loc = err["type"], err["msg"], err.get("ctx", {}), tuple(err["loc"])
    value, key = err.get("input"), next((str(i) for i in reversed(loc) if isinstance(i, str)), "")
    if kind == "extra_forbidden":
        return _unknown_key(model, loc, schema_command)
    if kind == "missing":
        return "required field is missing; add it"
    if kind == "string_type":
        if isinstance(value, (bool, int, float)):  # YAML read an unquoted 1, 1.10 or yes as a number or a bool
            text = _got(value) if isinstance(value, bool) else str(value)
            return f'expected a string, got {text}; quote it: {f"{key}: " if key else ""}"{text}"'
        return f"expected a string, got {_got(value)}" + (f"; write it after {key}:" if value is None else "")
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_got(value)}"
    if kind == "too_short" and isinstance(value, list | dict) and "min_length" in ctx:
        least, noun = ctx["min_length"], key.removesuffix("s") if key.endswith("s") else "item"
        some = f"one {noun}" if least == 1 else f"{least} {key or 'items'}"
        return f"{'the list is empty' if not value else f'it has {len(value)}'}; list at least {some}"
    if kind == "too_long" and isinstance(value, list | dict) and "max_length" in ctx:
        return f"it has {len(value)}; list at most {ctx['max_length']}"
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        bound, sign = _BOUNDS[kind]
        return f"got {_got(value)}; use a number {sign} {ctx[bound]:g}"
    if kind == "string_pattern_mismatch" and loc[-1] == "name" and "tensor" not in msg:
        return (
            f"got {value!r}; names use lowercase letters, digits, '-' and '_', "
            "start and end with a letter or digit, at most 63 characters"
        )
    msg = msg.removeprefix("Value error, ")
    if kind in ("enum", "literal_error") and "expected" in ctx:
        return f"got {value!r}; expected one of {ctx['expected']}"
    if "input" in err and kind not in ("value_error", "assertion_error") and not isinstance(value, (dict, list)):
        return f"{msg} (got {value!r})"
    return msg


def _also(errors: list[Any], first_field: str, data: Any) -> str:
    """The other problems' fields, so one line still says where else to look: ' (also: models[1:b].format)'."""
    fields = []
    for err in errors:
        field = _field_path(tuple(err["loc"]), data) or "the top level"
        fields.append(f"missing {field}" if err["type"] == "missing" else field)
    fields = [f for f in dict.fromkeys(fields) if f != first_field]
    if not fields:
        return ""
    more = f" and {len(fields) - 3} more" if len(fields) > 3 else ""
    return f" (also: {', '.join(fields[:3])}{more})"


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


Spec = TypeVar("Spec", bound=BaseModel)


def load_spec_file(path: str | Path, model: type[Spec], what: str, example: str, schema_command: str) -> Spec:
    """Read a YAML spec file into `model`; raise SpecError with one clear line on any problem.

    `what` names the spec in messages ("an app spec"), `example` is a file to copy from,
    `schema_command` lists every key.
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
    required = [name for name, field in model.model_fields.items() if field.is_required()]
    see = f"see {example}; `{schema_command}` lists every key"
    if data is None:
        raise SpecError(path, "", f"the file is empty; {what} needs at least {_listed(required)} ({see})")
    if not isinstance(data, dict):
        keys = _listed([f"{k}:" for k in required])
        raise SpecError(path, "", f"expected a mapping with {keys}, got {_got(data)} ({see})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # An unknown key is usually a typo that also explains any "missing" error: report it first.
        first, *rest = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        field = _field_path(tuple(first["loc"]), data)
        problem = _explain(first, model, schema_command) + _also(rest, field, data)
        raise SpecError(path, field, problem) from None
