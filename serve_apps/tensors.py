"""JSON tensors <-> numpy, for KServe V1 and the Open Inference Protocol V2.

Every request is checked against the model's declared inputs *here*, before
it reaches a replica: names, datatypes, shapes, element counts, value ranges
and finiteness. A client mistake becomes a `RequestError` (a 4xx), never an
exception inside a model.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, TypeGuard

import numpy as np

from .request_error import RequestError
from .spec import Datatype, ModelSpec, TensorSpec

__all__ = [
    "NUMPY_DTYPES",
    "check_inputs",
    "decode_v1",
    "decode_v2",
    "encode_v1",
    "encode_v2",
    "rows_of",
    "tensor_metadata",
    "new_request_id",
    "valid_request_id",
]

NUMPY_DTYPES: dict[Datatype, Any] = {
    Datatype.BOOL: np.bool_,
    Datatype.INT32: np.int32,
    Datatype.INT64: np.int64,
    Datatype.FP32: np.float32,
    Datatype.FP64: np.float64,
    Datatype.BYTES: object,
}

# What a datatype may be given, by the kind of value: JSON's (Python callers' numpy scalars count as theirs).
_ACCEPTED_KINDS: dict[Datatype, set[str]] = {
    Datatype.BOOL: {"booleans"},
    Datatype.INT32: {"integers"},
    Datatype.INT64: {"integers"},
    Datatype.FP32: {"integers", "floats"},
    Datatype.FP64: {"integers", "floats"},
    Datatype.BYTES: {"strings"},
}
_INT_RANGE: dict[Datatype, np.iinfo] = {Datatype.INT32: np.iinfo(np.int32), Datatype.INT64: np.iinfo(np.int64)}
_NUMPY_KINDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings", "S": "strings"}
# At most this many dimensions, each at most this long: beyond them numpy refuses to build the array.
MAX_DIMS, MAX_DIM = 32, 2**31 - 1
# A V2 request id reaches a response header and the logs: printable ASCII, and not a novel.
_REQUEST_ID = re.compile(r"[\x20-\x7e]{1,256}")


def new_request_id() -> str:
    """32 random hex digits, as `uuid.uuid4().hex` gives, at a fifth of its cost (it is paid on every request)."""
    return os.urandom(16).hex()


def valid_request_id(request_id: object) -> TypeGuard[str]:
    return isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id) is not None


def _shape_matches(declared: list[int], actual: tuple[int, ...]) -> bool:
    return len(declared) == len(actual) and all(d == -1 or d == a for d, a in zip(declared, actual, strict=True))


def _kind(cell_type: type) -> str:
    """What a value is, in the words of an error message (bool before int: a bool is an int in Python)."""
    for kind, types in (
        ("booleans", (bool, np.bool_)),
        ("integers", (int, np.integer)),
        ("floats", (float, np.floating)),
        ("strings", (str, bytes)),
        ("null", (type(None),)),
        ("objects", (dict,)),
        ("nested lists", (list, tuple)),
    ):
        if issubclass(cell_type, types):
            return kind
    return "mixed values"


def _cells(data: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """Nested JSON lists -> an object array of references to the parsed values, every one checked.

    Never numpy's own inference: a list mixing numbers and one long string
    becomes a fixed-width string array sized by that string in every cell
    (a 500 KB body became 100 MB). An object array costs one pointer per value.
    """
    try:
        cells = np.asarray(data, dtype=object)
    except ValueError as exc:  # nesting numpy cannot shape, e.g. deeper than it allows
        raise RequestError(422, f"{where}: data is not a rectangular array ({exc})") from None
    kinds = {_kind(t) for t in set(map(type, cells.flat))}
    if "nested lists" in kinds:
        raise RequestError(422, f"{where}: data is not a rectangular array (rows of different lengths or depths)")
    refused = sorted(kinds - _ACCEPTED_KINDS[spec.datatype])
    if refused == ["floats"] and spec.datatype in _INT_RANGE and all(map(_integer_beyond_int64, cells.flat)):
        # JSON parsers turn an integer literal beyond 64 bits into a float: say what is wrong with it.
        info = _INT_RANGE[spec.datatype]
        raise RequestError(422, f"{where}: values must lie in [{info.min}, {info.max}] for {spec.datatype.value}")
    if refused:
        raise RequestError(422, f"{where}: datatype {spec.datatype.value} cannot hold {', '.join(refused)}")
    return cells


def _integer_beyond_int64(value: Any) -> bool:
    """True for what is not a float, and for a whole float no int64 holds (how an oversized integer arrives)."""
    return not isinstance(value, float) or (value.is_integer() and abs(value) >= 2**63)


def _to_array(data: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """JSON data (or a Python caller's array) -> an array of the spec's dtype, refusing lossy conversions."""
    if isinstance(data, np.ndarray) and data.dtype != object:  # a Python caller's typed array: its dtype says its kind
        kind = _NUMPY_KINDS.get(data.dtype.kind, "mixed values")
        if data.size and kind not in _ACCEPTED_KINDS[spec.datatype]:
            raise RequestError(422, f"{where}: datatype {spec.datatype.value} cannot hold {kind}")
        cells = data
    else:
        cells = _cells(data, spec, where)
    if spec.datatype is Datatype.BYTES:
        return cells.astype(object)
    if spec.datatype in _INT_RANGE:
        info = _INT_RANGE[spec.datatype]
        try:
            array = cells.astype(np.int64) if cells.dtype == object else cells
        except OverflowError:  # a Python int beyond int64
            array = None
        if array is None or (array.size and (array.min() < info.min or array.max() > info.max)):
            raise RequestError(422, f"{where}: values must lie in [{info.min}, {info.max}] for {spec.datatype.value}")
        return array.astype(NUMPY_DTYPES[spec.datatype])
    try:
        with np.errstate(over="ignore"):
            array = cells.astype(NUMPY_DTYPES[spec.datatype])
    except OverflowError:  # a Python int beyond any float
        array = np.array([np.inf])
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        raise RequestError(422, f"{where}: numbers must be finite and fit {spec.datatype.value}")
    return array


def _check_shape(array: np.ndarray, spec: TensorSpec, where: str) -> None:
    if not _shape_matches(spec.shape, array.shape):
        raise RequestError(
            422, f"{where}: shape {list(array.shape)} does not match the model's {spec.shape} (-1 = any)"
        )
    if array.shape[0] == 0:
        raise RequestError(422, f"{where}: the batch is empty; send at least one row")


def _check_same_rows(arrays: dict[str, np.ndarray]) -> None:
    rows = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(rows.values())) > 1:
        raise RequestError(422, f"inputs disagree on the batch size (first dimension): {rows}")


def decode_v2(body: Any, model: ModelSpec) -> tuple[dict[str, np.ndarray], str, list[str] | None]:
    """An OIP V2 infer request -> (inputs, request id, requested output names or None)."""
    if not isinstance(body, dict):
        raise RequestError(422, 'the body must be a JSON object with an "inputs" list')
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise RequestError(422, '"inputs" must be a non-empty list of {name, shape, datatype, data}')
    declared = {t.name: t for t in model.inputs}
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(tensors):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise RequestError(422, f"{where}: must be an object with name, shape, datatype and data")
        missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
        if missing:
            raise RequestError(422, f"{where}: missing {', '.join(missing)}")
        name = tensor["name"]
        if not isinstance(name, str) or name not in declared:
            raise RequestError(422, f"{where}: unknown input {name!r}; model {model.name!r} takes {sorted(declared)}")
        if name in arrays:
            raise RequestError(422, f"{where}: input {name!r} is given twice")
        spec, where = declared[name], f"input {name!r}"
        if tensor["datatype"] != spec.datatype.value:
            raise RequestError(
                422, f"{where}: datatype {tensor['datatype']!r} given, the model takes {spec.datatype.value}"
            )
        shape = tensor["shape"]
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_DIMS
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape)
        ):
            raise RequestError(
                422,
                f"{where}: shape must be a list of at most {MAX_DIMS} integers in [0, {MAX_DIM}], got "
                f"{str(shape)[:200]}",
            )
        data = tensor["data"]
        if not isinstance(data, list):
            raise RequestError(422, f"{where}: data must be a list")
        array = _to_array(data, spec, where)
        if array.size != math.prod(shape):
            raise RequestError(422, f"{where}: shape {shape} needs {math.prod(shape)} values, data has {array.size}")
        array = array.reshape(shape)
        _check_shape(array, spec, where)
        arrays[name] = array
    _check_names(arrays, model)
    _check_same_rows(arrays)
    request_id = body.get("id")
    if request_id is not None and not valid_request_id(request_id):
        raise RequestError(
            422, '"id" must be a string of 1 to 256 printable ASCII characters (it is echoed in a header)'
        )
    return arrays, request_id or new_request_id(), _requested_outputs(body, model)


def _requested_outputs(body: dict, model: ModelSpec) -> list[str] | None:
    wanted = body.get("outputs")
    if wanted is None:
        return None
    declared = [t.name for t in model.outputs]
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise RequestError(422, '"outputs" must be a list of {"name": ...}')
    names = [o["name"] for o in wanted]
    unknown = sorted(set(names) - set(declared))
    if unknown:
        raise RequestError(422, f"unknown output(s) {unknown}; model {model.name!r} returns {declared}")
    return names


def decode_v1(body: Any, model: ModelSpec) -> dict[str, np.ndarray]:
    """A KServe V1 `{"instances": [...]}` request -> inputs.

    An instance is an object keyed by input name, or, for a model with one
    input, that input's row itself. The first instance says which.
    """
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
        raise RequestError(422, 'the body must be {"instances": [...]} with at least one instance')
    instances = body["instances"]
    names = [t.name for t in model.inputs]
    if isinstance(instances[0], dict):
        columns = _columns_by_name(instances, model)
    elif len(names) == 1:
        columns = {names[0]: instances}
    else:
        raise RequestError(
            422, f"model {model.name!r} has several inputs {names}: each instance must be an object keyed by input name"
        )
    arrays = {}
    for spec in model.inputs:
        where = f"instances (input {spec.name!r})"
        array = _to_array(columns[spec.name], spec, where)
        _check_shape(array, spec, where)
        arrays[spec.name] = array
    _check_same_rows(arrays)
    return arrays


def _columns_by_name(instances: list, model: ModelSpec) -> dict[str, list]:
    """V1 instances as objects keyed by input name -> one list per input, every instance checked for its names."""
    names = [t.name for t in model.inputs]
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RequestError(
                422,
                f"instances[{i}]: must be an object keyed by input name, as instances[0] is; "
                f"model {model.name!r} takes {names}",
            )
        if len(instance) != len(names) or not all(n in instance for n in names):
            _check_names(instance, model, f"instances[{i}]: ")
    return {n: [instance[n] for instance in instances] for n in names}


def _check_names(given: dict, model: ModelSpec, where: str = "") -> None:
    """422 naming the inputs `given` lacks and those the model does not take."""
    declared = [t.name for t in model.inputs]
    missing = [n for n in declared if n not in given]
    unknown = sorted(str(n)[:100] for n in given if n not in declared)[:10]  # names a client made up: bounded
    problems = [f"{what} input(s) {names}" for what, names in (("missing", missing), ("unknown", unknown)) if names]
    if problems:
        raise RequestError(422, f"{where}{' and '.join(problems)} for model {model.name!r}, which takes {declared}")


def check_inputs(inputs: Any, model: ModelSpec) -> dict[str, np.ndarray]:
    """Python callers' `{name: array or nested list}` -> checked inputs, as strict as over HTTP."""
    if not isinstance(inputs, dict):
        raise RequestError(
            422,
            f"inputs must be a dict of input name -> array; model {model.name!r} takes "
            f"{[t.name for t in model.inputs]}",
        )
    _check_names(inputs, model)
    declared = {t.name: t for t in model.inputs}
    arrays = {}
    for name, spec in declared.items():
        array = _to_array(inputs[name], spec, f"input {name!r}")
        _check_shape(array, spec, f"input {name!r}")
        arrays[name] = array
    _check_same_rows(arrays)
    return arrays


def encode_v2(outputs: dict[str, np.ndarray], model: ModelSpec, request_id: str, only: list[str] | None) -> dict:
    declared = {t.name: t for t in model.outputs}
    names = only or [t.name for t in model.outputs]
    return {
        "model_name": model.name,
        "model_version": model.version,
        "id": request_id,
        "outputs": [
            {
                "name": name,
                "datatype": declared[name].datatype.value,
                "shape": list(outputs[name].shape),
                "data": outputs[name].reshape(-1).tolist(),
            }
            for name in names
        ],
    }


def encode_v1(outputs: dict[str, np.ndarray], model: ModelSpec) -> dict:
    if len(model.outputs) == 1:
        return {"predictions": outputs[model.outputs[0].name].tolist()}
    columns = {t.name: outputs[t.name].tolist() for t in model.outputs}
    rows = len(next(iter(columns.values())))
    return {"predictions": [{name: column[i] for name, column in columns.items()} for i in range(rows)]}


def rows_of(inputs: dict[str, np.ndarray]) -> int:
    return next(iter(inputs.values())).shape[0]


def tensor_metadata(tensors: list[TensorSpec]) -> list[dict]:
    return [{"name": t.name, "datatype": t.datatype.value, "shape": t.shape} for t in tensors]
