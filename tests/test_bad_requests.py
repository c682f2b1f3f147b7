"""A corpus of bad requests: each gets a 4xx with {"error": ...}; none a 500, a hang or an outage."""

from __future__ import annotations

import time

import pytest

from serve_apps.request_error import RequestError
from serve_apps.spec import ModelSpec, load_app_spec
from serve_apps.tensors import decode_v1, decode_v2
from tests.helpers import MAX_BODY_MB, ROOT, TYPES_MODEL, Fleet

PIX = [0.0] * 64
TYPES_OK = [
    {"name": "in_fp32", "datatype": "FP32", "shape": [1, 1], "data": [1.0]},
    {"name": "in_fp64", "datatype": "FP64", "shape": [1, 1], "data": [1.0]},
    {"name": "in_int32", "datatype": "INT32", "shape": [1, 1], "data": [1]},
    {"name": "in_int64", "datatype": "INT64", "shape": [1, 1], "data": [1]},
    {"name": "in_bool", "datatype": "BOOL", "shape": [1, 1], "data": [True]},
    {"name": "in_bytes", "datatype": "BYTES", "shape": [1, 1], "data": ["x"]},
]


def _types_with(name: str, **change) -> dict:
    return {"inputs": [{**t, **change} if t["name"] == name else t for t in TYPES_OK]}


def _pixels(**change) -> dict:
    return {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": PIX, **change}]}


V2_DIGITS = "/v2/models/digits/infer"
V2_TYPES = "/v2/models/types/infer"

# (id, method, path, json body or raw bytes, expected status, what the error must say: the reason, not only the code)
CORPUS = [
    ("unknown-model-v2", "POST", "/v2/models/nope/infer", _pixels(), 404, "model 'nope' not found"),
    ("unknown-model-v1", "POST", "/v1/models/nope:predict", {"instances": [PIX]}, 404, "model 'nope' not found"),
    ("unknown-model-meta", "GET", "/v2/models/nope", None, 404, "model 'nope' not found"),
    ("unknown-version", "POST", "/v2/models/digits/versions/9/infer", _pixels(), 404, "has no version '9'"),
    ("unknown-route", "GET", "/nowhere", None, 404, "no such route"),
    ("wrong-method", "GET", V2_DIGITS, None, 405, "method not allowed"),
    ("not-json", "POST", V2_DIGITS, b"this is not json", 400, "not valid JSON"),
    ("empty-body", "POST", V2_DIGITS, b"", 400, "not valid JSON"),
    (
        "nan-literal",
        "POST",
        V2_DIGITS,
        b'{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,1],"data":[NaN]}]}',
        400,
        "not valid JSON",
    ),
    ("deep-nesting", "POST", V2_DIGITS, b"[" * 100_000 + b"]" * 100_000, 400, "depth limit exceeded"),
    ("json-array", "POST", V2_DIGITS, [], 422, "must be a JSON object"),
    ("no-inputs", "POST", V2_DIGITS, {}, 422, '"inputs" must be a non-empty list'),
    ("inputs-not-list", "POST", V2_DIGITS, {"inputs": {"pixels": PIX}}, 422, '"inputs" must be a non-empty list'),
    ("inputs-empty", "POST", V2_DIGITS, {"inputs": []}, 422, '"inputs" must be a non-empty list'),
    ("input-not-object", "POST", V2_DIGITS, {"inputs": [1]}, 422, "inputs[0]: must be an object"),
    (
        "input-missing-data",
        "POST",
        V2_DIGITS,
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64]}]},
        422,
        "inputs[0]: missing data",
    ),
    ("unknown-input", "POST", V2_DIGITS, _pixels(name="pixel"), 422, "unknown input 'pixel'"),
    ("wrong-datatype", "POST", V2_DIGITS, _pixels(datatype="FP64"), 422, "datatype 'FP64' given, the model takes FP32"),
    ("shape-mismatch", "POST", V2_DIGITS, _pixels(shape=[1, 63], data=PIX[:63]), 422, "shape [1, 63] does not match"),
    ("rank-mismatch", "POST", V2_DIGITS, _pixels(shape=[64]), 422, "shape [64] does not match"),
    ("count-mismatch", "POST", V2_DIGITS, _pixels(data=PIX[:10]), 422, "needs 64 values, data has 10"),
    ("negative-dim", "POST", V2_DIGITS, _pixels(shape=[-1, 64]), 422, "got [-1, 64]"),
    ("shape-not-ints", "POST", V2_DIGITS, _pixels(shape=["1", 64]), 422, "got ['1', 64]"),
    ("data-not-list", "POST", V2_DIGITS, _pixels(data="0" * 64), 422, "data must be a list"),
    ("strings-as-floats", "POST", V2_DIGITS, _pixels(data=["a"] * 64), 422, "FP32 cannot hold strings"),
    ("ragged-data", "POST", V2_DIGITS, _pixels(data=[[0.0] * 63, [0.0] * 64]), 422, "not a rectangular array"),
    ("fp32-overflow", "POST", V2_DIGITS, _pixels(data=[1e39] * 64), 422, "must be finite and fit FP32"),
    ("empty-batch", "POST", V2_DIGITS, _pixels(shape=[0, 64], data=[]), 422, "the batch is empty"),
    ("duplicate-input", "POST", V2_DIGITS, {"inputs": _pixels()["inputs"] * 2}, 422, "given twice"),
    ("id-not-string", "POST", V2_DIGITS, {**_pixels(), "id": 7}, 422, '"id" must be a string'),
    (
        "unknown-output",
        "POST",
        V2_DIGITS,
        {**_pixels(), "outputs": [{"name": "logits"}]},
        422,
        "unknown output(s) ['logits']",
    ),
    ("missing-inputs", "POST", V2_TYPES, {"inputs": TYPES_OK[:1]}, 422, "missing input(s)"),
    (
        "batch-disagree",
        "POST",
        V2_TYPES,
        _types_with("in_fp64", shape=[2, 1], data=[1.0, 2.0]),
        422,
        "disagree on the batch size",
    ),
    ("float-into-int", "POST", V2_TYPES, _types_with("in_int32", data=[1.5]), 422, "INT32 cannot hold floats"),
    ("bool-into-int", "POST", V2_TYPES, _types_with("in_int64", data=[True]), 422, "INT64 cannot hold booleans"),
    (
        "int32-overflow",
        "POST",
        V2_TYPES,
        _types_with("in_int32", data=[2**31]),
        422,
        "must lie in [-2147483648, 2147483647] for INT32",
    ),
    (
        "int64-overflow",
        "POST",
        V2_TYPES,
        _types_with("in_int64", data=[2**64]),
        422,
        "must lie in [-9223372036854775808, 9223372036854775807] for INT64",
    ),
    ("number-into-bool", "POST", V2_TYPES, _types_with("in_bool", data=[1]), 422, "BOOL cannot hold integers"),
    ("number-into-bytes", "POST", V2_TYPES, _types_with("in_bytes", data=[1]), 422, "BYTES cannot hold integers"),
    ("v1-no-instances", "POST", "/v1/models/digits:predict", {"inputs": [PIX]}, 422, 'must be {"instances": [...]}'),
    ("v1-empty", "POST", "/v1/models/digits:predict", {"instances": []}, 422, 'must be {"instances": [...]}'),
    (
        "v1-wrong-width",
        "POST",
        "/v1/models/digits:predict",
        {"instances": [[0.0] * 3]},
        422,
        "shape [1, 3] does not match",
    ),
    ("v1-multi-input-rows", "POST", "/v1/models/types:predict", {"instances": [[1.0]]}, 422, "has several inputs"),
    (
        "v1-missing-input",
        "POST",
        "/v1/models/types:predict",
        {"instances": [{"in_fp32": [1.0], "in_fp65": [1.0]}]},
        422,
        "instances[0]: missing input(s) ['in_fp64', 'in_int32', 'in_int64', 'in_bool', 'in_bytes'] "
        "and unknown input(s) ['in_fp65']",
    ),
]


@pytest.mark.parametrize("method,path,body,status,says", [pytest.param(*c[1:], id=c[0]) for c in CORPUS])
def test_bad_request_is_a_clear_4xx(client, method: str, path: str, body, status: int, says: str) -> None:
    if isinstance(body, bytes):
        response = client.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and says in error, error


DECODER_SPECS = {
    "digits": lambda: load_app_spec(ROOT / "examples/digits/app.yaml").model("digits"),
    "types": lambda: ModelSpec.model_validate(TYPES_MODEL),
}
DECODED = [c for c in CORPUS if c[4] == 422 and not isinstance(c[3], bytes)]


@pytest.mark.parametrize("path,body,says", [pytest.param(c[2], c[3], c[5], id=c[0]) for c in DECODED])
def test_the_decoder_alone_refuses_for_the_same_reason(path: str, body, says: str) -> None:
    """Request validation is a pure function (tensors.py): the same corpus, no server, the same sentences."""
    model = path.split("/")[3].split(":")[0]
    decode = decode_v2 if path.startswith("/v2/") else decode_v1
    with pytest.raises(RequestError) as refused:
        decode(body, DECODER_SPECS[model]())
    assert refused.value.status == 422 and says in str(refused.value), str(refused.value)


def test_unsupported_content_type_is_415(client) -> None:
    response = client.post(V2_DIGITS, content=b"pixels=1", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "application/json" in response.json()["error"]


def test_oversized_body_is_413_with_or_without_content_length(client) -> None:
    big = b'{"inputs": [' + b" " * int(MAX_BODY_MB * 1024 * 1024 + 10) + b"]}"
    declared = client.post(V2_DIGITS, content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "max_body_mb" in declared.json()["error"]
    streamed = client.post(
        V2_DIGITS, content=iter([big[:1000], big[1000:]]), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_model_exception_is_a_500_with_request_id_and_the_server_keeps_serving(client, fleet: Fleet) -> None:
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [-1.0, 0.0, 0.0, 0.0]}]}
    response = client.post("/v2/models/faulty/infer", json=bad)
    assert response.status_code == 500
    request_id = response.json()["request_id"]
    assert request_id in response.json()["error"]
    good = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
    again = client.post("/v2/models/faulty/infer", json=good)
    assert again.status_code == 200 and again.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    deadline = time.monotonic() + 30  # replica logs reach the driver's output asynchronously
    while request_id not in fleet.log() and time.monotonic() < deadline:
        time.sleep(0.5)
    log = fleet.log()
    assert request_id in log and "Traceback" in log and "faulty model: negative input" in log


def test_server_still_healthy_after_the_corpus(client) -> None:
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post("/v1/models/echo:predict", json={"instances": [[1.0]]}).json() == {"predictions": [[1.0]]}
