"""Request decoding in-process: hostile tensors cost the ingress little memory and are 4xx, never 500.

No Ray here: `tensors.py` is what every ingress replica runs on every body.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import orjson
import pytest

from serve_apps.request_error import RequestError
from serve_apps.spec import ModelSpec
from serve_apps.tensors import check_inputs, decode_v1, decode_v2


def _model(datatype: str, shape: list[int]) -> ModelSpec:
    return ModelSpec(
        name="m",
        format="builtin",
        module="echo",
        inputs=[{"name": "x", "datatype": datatype, "shape": shape}],
        outputs=[{"name": "y", "datatype": datatype, "shape": shape}],
    )


def _v2(data: list, datatype: str, shape: list[int] | None = None) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape or [len(data)], "data": data}]})


def _peak_bytes(decode) -> int:
    tracemalloc.start()
    try:
        try:
            decode()
        except RequestError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# Each hostile body is about 500 KB. Before decoding by the declared datatype, the first became a
# fixed-width unicode array of 100 MB (numpy sized every cell for the longest string).
_LONG = "x" * 250_000
HOSTILE = {
    "numbers-and-one-long-string": (_v2([1.0] * 60_000 + [_LONG], "FP32"), "FP32", [-1]),
    "strings-one-long": (_v2(["a"] * 60_000 + [_LONG], "BYTES"), "BYTES", [-1]),
    "ints-and-one-long-string": (_v2([1] * 60_000 + [_LONG], "INT64"), "INT64", [-1]),
    "bools-and-one-long-string": (_v2([True] * 60_000 + [_LONG], "BOOL"), "BOOL", [-1]),
}


# Parsing JSON into Python objects costs what it costs (a float is 4 body bytes and 32 parsed ones, and
# the list grows while orjson parses it); decoding after that must add no more than a few pointers a value.
PARSE_AND_DECODE_BOUND, DECODE_BOUND = 32, 4


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_decoding_costs_a_small_multiple_of_the_body(name: str) -> None:
    body, datatype, shape = HOSTILE[name]
    model = _model(datatype, shape)
    whole = _peak_bytes(lambda: decode_v2(orjson.loads(body), model))
    assert whole < PARSE_AND_DECODE_BOUND * len(body), f"{name}: a {len(body)}-byte body took {whole} bytes"
    parsed = orjson.loads(body)
    decoding = _peak_bytes(lambda: decode_v2(parsed, model))
    assert decoding < DECODE_BOUND * len(body), f"{name}: decoding a {len(body)}-byte body allocated {decoding} bytes"


def test_v1_decoding_costs_a_small_multiple_of_the_body() -> None:
    body = orjson.dumps({"instances": [1.0] * 60_000 + [_LONG]})
    whole = _peak_bytes(lambda: decode_v1(orjson.loads(body), _model("FP32", [-1])))
    assert whole < PARSE_AND_DECODE_BOUND * len(body), whole


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        ([1, "2"], "FP32", [-1], "cannot hold strings"),
        (["1.5"], "FP64", [-1], "cannot hold strings"),
        ([True, 1], "INT32", [-1], "cannot hold booleans"),
        ([1.5], "INT64", [-1], "cannot hold floats"),
        ([1, 2], "BYTES", [-1], "cannot hold integers"),
        ([1, None], "FP32", [-1], "cannot hold null"),
        ([[1, 2], [3]], "FP32", [-1, -1], "not a rectangular array"),
        ([[1, 2], [3, [4]]], "FP32", [-1, -1], "not a rectangular array"),
        ([1.0, {"a": 1}], "FP32", [-1], "cannot hold objects"),  # rows, as the first instance says, then an object
        ([2**31], "INT32", [-1], "must lie in"),
        ([2**63], "INT64", [-1], "must lie in"),
        ([-(2**70)], "INT64", [-1], "must lie in"),
        ([10**400], "FP64", [-1], "finite"),
        ([1e39], "FP32", [-1], "finite"),
    ],
)
def test_wrong_values_are_422_naming_the_problem(data: list, datatype: str, shape: list[int], message: str) -> None:
    model = _model(datatype, shape)
    with pytest.raises(RequestError) as caught:
        decode_v1({"instances": data}, model)
    assert caught.value.status == 422 and message in str(caught.value), str(caught.value)


@pytest.mark.parametrize("shape", [[0, 10**30], [10**30, 0], [0, 2**63]])
def test_huge_dimensions_are_422(shape: list[int]) -> None:
    model = _model("FP32", [-1, -1])
    with pytest.raises(RequestError) as caught:
        decode_v2({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": []}]}, model)
    assert caught.value.status == 422


@pytest.mark.parametrize("request_id", ["a\r\nSet-Cookie: x=1", "a\nb", "\x00", "x" * 1000, "é\u2028"])
def test_request_ids_that_would_reach_headers_or_logs_raw_are_422(request_id: str) -> None:
    body = {"id": request_id, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    with pytest.raises(RequestError) as caught:
        decode_v2(body, _model("FP32", [-1]))
    assert caught.value.status == 422 and '"id"' in str(caught.value)


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("FP32", [[1, 2.5], [3, 4]], np.float32),
        ("FP64", [1, 2.5], np.float64),
        ("INT32", [-(2**31), 2**31 - 1], np.int32),
        ("INT64", [2**63 - 1, -(2**63)], np.int64),
        ("BOOL", [True, False], np.bool_),
        ("BYTES", ["a", "é", ""], object),
    ],
)
def test_good_values_decode_to_the_declared_dtype(datatype: str, data: list, dtype) -> None:
    shape = [-1, 2] if isinstance(data[0], list) else [-1]
    decoded = decode_v1({"instances": data}, _model(datatype, shape))["x"]
    assert decoded.dtype == dtype and decoded.tolist() == data


def test_python_callers_numpy_arrays_keep_their_fast_path() -> None:
    model = _model("FP32", [-1, 3])
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert check_inputs({"x": array}, model)["x"].dtype == np.float32
    with pytest.raises(RequestError, match="cannot hold strings"):
        check_inputs({"x": np.array([["a", "b", "c"]])}, model)
    strings = check_inputs({"x": np.array([["a", "b", "c"]], dtype=object)}, _model("BYTES", [-1, 3]))["x"]
    assert strings.tolist() == [["a", "b", "c"]]


@pytest.mark.parametrize("literal", [b"18446744073709551616", b"-18446744073709551617", b"1e30"])
def test_an_integer_too_big_for_int64_is_named_as_such_though_json_made_it_a_float(literal: bytes) -> None:
    """orjson turns integer literals beyond 64 bits into floats; 'cannot hold floats' would blame the wrong thing."""
    body = b'{"inputs":[{"name":"x","datatype":"INT64","shape":[1,1],"data":[' + literal + b"]}]}"
    with pytest.raises(RequestError, match=r"values must lie in \[-9223372036854775808, 9223372036854775807\]"):
        decode_v2(orjson.loads(body), _model("INT64", [-1, 1]))
    with pytest.raises(RequestError, match="cannot hold floats"):  # a fraction is still a float
        decode_v2(orjson.loads(body.replace(literal, b"2.5")), _model("INT64", [-1, 1]))


def _two_inputs() -> ModelSpec:
    return ModelSpec(
        name="m2",
        format="builtin",
        module="echo",
        inputs=[{"name": "a", "datatype": "FP32", "shape": [-1, 2]}, {"name": "b", "datatype": "INT64", "shape": [-1]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    )


@pytest.mark.parametrize(
    ("instances", "expected"),
    [([{"x": [1.0, 2.0]}, {"x": [3.0, 4.0]}], [[1.0, 2.0], [3.0, 4.0]]), ([[1.0, 2.0]], [[1.0, 2.0]])],
    ids=["objects", "rows"],
)
def test_v1_instances_for_one_input_may_be_rows_or_objects_keyed_by_its_name(instances: list, expected: list) -> None:
    assert decode_v1({"instances": instances}, _model("FP32", [-1, 2]))["x"].tolist() == expected


def test_v1_objects_for_several_inputs_become_columns() -> None:
    decoded = decode_v1({"instances": [{"a": [1, 2], "b": 3}, {"b": 4, "a": [5, 6]}]}, _two_inputs())
    assert decoded["a"].tolist() == [[1.0, 2.0], [5.0, 6.0]] and decoded["b"].tolist() == [3, 4]


# Every message names the instance and the input(s) at fault, not only what a good request looks like.
MISSING_OR_UNKNOWN = {
    "v1-one-input-missing-key": (
        lambda: decode_v1({"instances": [{"x": [1.0, 2.0]}, {"y": [1.0, 2.0]}]}, _model("FP32", [-1, 2])),
        "instances[1]: missing input(s) ['x'] and unknown input(s) ['y'] for model 'm', which takes ['x']",
    ),
    "v1-one-input-object-then-row": (
        lambda: decode_v1({"instances": [{"x": [1.0, 2.0]}, [1.0, 2.0]]}, _model("FP32", [-1, 2])),
        "instances[1]: must be an object keyed by input name, as instances[0] is; model 'm' takes ['x']",
    ),
    "v1-several-inputs-missing-one": (
        lambda: decode_v1({"instances": [{"a": [1, 2], "b": 3}, {"a": [1, 2]}]}, _two_inputs()),
        "instances[1]: missing input(s) ['b'] for model 'm2', which takes ['a', 'b']",
    ),
    "v1-several-inputs-unknown-one": (
        lambda: decode_v1({"instances": [{"a": [1, 2], "b": 3, "c": 1}]}, _two_inputs()),
        "instances[0]: unknown input(s) ['c'] for model 'm2', which takes ['a', 'b']",
    ),
    "v1-several-inputs-rows": (
        lambda: decode_v1({"instances": [[1, 2]]}, _two_inputs()),
        "model 'm2' has several inputs ['a', 'b']: each instance must be an object keyed by input name",
    ),
    "v2-missing-one": (
        lambda: decode_v2(
            {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}, _two_inputs()
        ),
        "missing input(s) ['b'] for model 'm2', which takes ['a', 'b']",
    ),
    "python-missing-one": (
        lambda: check_inputs({"a": np.zeros((1, 2))}, _two_inputs()),
        "missing input(s) ['b'] for model 'm2', which takes ['a', 'b']",
    ),
    "python-unknown-one": (
        lambda: check_inputs({"a": np.zeros((1, 2)), "b": np.zeros(1, dtype=np.int64), "z": 1}, _two_inputs()),
        "unknown input(s) ['z'] for model 'm2', which takes ['a', 'b']",
    ),
}


@pytest.mark.parametrize("case", sorted(MISSING_OR_UNKNOWN))
def test_missing_and_unknown_inputs_are_named(case: str) -> None:
    decode, message = MISSING_OR_UNKNOWN[case]
    with pytest.raises(RequestError) as caught:
        decode()
    assert caught.value.status == 422 and str(caught.value) == message
