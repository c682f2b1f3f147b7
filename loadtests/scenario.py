"""What a load test sends: endpoints with their request bodies, built from an app spec or given as a URL and bodies.

A `Scenario` is plain data (it goes to Locust worker processes as JSON). Bodies
are generated once, up front, from each model's declared inputs: the load
generator's CPU is the scarcest thing on a small machine, so it only cycles
through ready bytes. A multiplexed family's requests name model ids drawn from
a Zipf distribution, as real traffic to per-customer models is skewed.
"""

from __future__ import annotations

import glob
import json
import math
import re
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, Field

from serve_apps.samples import example_shape
from serve_apps.spec import MODEL_ID_PLACEHOLDER, AppSpec, Datatype, ModelSpec, TensorSpec

__all__ = ["Endpoint", "Scenario", "ScenarioError", "from_app", "from_bodies", "from_url", "parse_weights"]

BODIES_PER_ENDPOINT = 64
ZIPF_EXPONENT = 1.1
_WORDS = (
    "the quick brown fox jumps over a lazy dog while model servers batch many small requests "
    "into larger ones so that every core stays busy and latency stays low under load"
).split()


class ScenarioError(ValueError):
    """The load test cannot be built as asked; the message says what to change."""


class Endpoint(BaseModel):
    """One kind of request: a Locust user class of its own, with a weight among the others."""

    name: str = Field(description="Locust's `name=`: requests are grouped (and reported) under it.")
    model: str | None = Field(default=None, description="The model it calls, for the per-model breakdown.")
    weight: float = Field(default=1.0, gt=0)
    paths: list[str] = Field(min_length=1, description="URL paths; a multiplexed family has one per model id.")
    path_weights: list[float] | None = Field(
        default=None, description="Relative weights of `paths` (Zipf for a family)."
    )
    bodies: list[str] = Field(min_length=1, description="Request bodies, sent in turn.")
    expect: str | None = Field(default=None, description="A 200 whose body lacks this text counts as a failure.")


class Scenario(BaseModel):
    base_url: str
    endpoints: list[Endpoint] = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    protocol: str = "v2"
    rows_per_request: int = 1
    metrics_path: str = "/metrics"  # where the ingress counts what it served: under the app's route prefix


def parse_weights(items: list[str]) -> dict[str, float]:
    """`["digits=3", "echo=1"]` -> {"digits": 3.0, "echo": 1.0}."""
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name or weights[name] <= 0:
            raise ScenarioError(f"--weight {item!r}: expected MODEL=WEIGHT with a positive number, e.g. digits=3")
    return weights


def _tensor(tensor: TensorSpec, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Random values of the tensor's type; integers stay small (0-7), as category codes and counts usually are."""
    shape = example_shape(tensor, rows)
    match tensor.datatype:
        case Datatype.FP32 | Datatype.FP64:
            return rng.random(shape).round(4)
        case Datatype.INT32 | Datatype.INT64:
            return rng.integers(0, 8, shape)
        case Datatype.BOOL:
            return rng.random(shape) < 0.5
        case Datatype.BYTES:
            sentences = [" ".join(rng.choice(_WORDS, rng.integers(3, 13))) for _ in range(math.prod(shape))]
            return np.array(sentences, dtype=object).reshape(shape)
    raise ScenarioError(f"input {tensor.name!r}: no generator for datatype {tensor.datatype}")


def _body(model: ModelSpec, protocol: str, rows: int, rng: np.random.Generator) -> str:
    arrays = {t.name: _tensor(t, rows, rng) for t in model.inputs}
    if protocol == "v2":
        inputs = [
            {
                "name": t.name,
                "datatype": t.datatype.value,
                "shape": list(arrays[t.name].shape),
                "data": arrays[t.name].ravel().tolist(),
            }
            for t in model.inputs
        ]
        return json.dumps({"inputs": inputs})
    if len(model.inputs) == 1:
        return json.dumps({"instances": arrays[model.inputs[0].name].tolist()})
    return json.dumps({"instances": [{name: array[i].tolist() for name, array in arrays.items()} for i in range(rows)]})


def family_ids(model: ModelSpec) -> list[str]:
    """The model ids of a multiplexed family whose artifacts are local files (else its example id, if any)."""
    uri = model.artifact.uri if model.artifact else ""
    found: list[str] = []
    if uri.startswith("file://"):
        pattern = uri.removeprefix("file://")
        head, _, tail = pattern.partition(MODEL_ID_PLACEHOLDER)
        matcher = re.compile(re.escape(head) + r"([A-Za-z0-9][A-Za-z0-9_.-]*)" + re.escape(tail))
        found = sorted(
            {
                m.group(1)
                for path in glob.glob(pattern.replace(MODEL_ID_PLACEHOLDER, "*"))
                if (m := matcher.fullmatch(path))
            }
        )
    if not found and model.multiplex and model.multiplex.example_id:
        found = [model.multiplex.example_id]
    return found


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}


def _zipf(count: int) -> list[float]:
    return [1.0 / (rank**ZIPF_EXPONENT) for rank in range(1, count + 1)]


def _route(model: ModelSpec, protocol: str, model_id: str | None = None) -> str:
    name = f"{model.name}:{model_id}" if model_id else model.name
    return f"/v2/models/{name}/infer" if protocol == "v2" else f"/v1/models/{name}:predict"


def from_app(
    spec: AppSpec,
    base_url: str,
    *,
    protocol: str = "v2",
    rows: int = 1,
    models: list[str] | None = None,
    weights: dict[str, float] | None = None,
    model_ids: dict[str, list[str]] | None = None,
    api_key: str | None = None,
    seed: int = 0,
) -> Scenario:
    """One endpoint per model of the app (or per model named in `models`), each with generated bodies."""
    if protocol not in ("v1", "v2"):
        raise ScenarioError(f"--protocol {protocol!r}: expected v1 or v2")
    if rows < 1:
        raise ScenarioError(f"--batch-size {rows}: a request carries at least one row")
    known = [m.name for m in spec.models]
    for name in [*(models or []), *(weights or {}), *(model_ids or {})]:
        if name not in known:
            raise ScenarioError(f"model {name!r} is not in app {spec.name!r}; its models are {known}")
    rng = np.random.default_rng(seed)
    resolved = spec.resolved()
    prefix = spec.route_prefix.rstrip("/")
    endpoints = []
    for model in resolved.models:
        if models and model.name not in models:
            continue
        if model.multiplex is not None:
            ids = (model_ids or {}).get(model.name) or family_ids(model)
            if not ids:
                raise ScenarioError(
                    f"model {model.name!r} is a multiplexed family with no known model ids; "
                    f"name some with --model-ids {model.name}=ID1,ID2 or set multiplex.example_id"
                )
            paths, path_weights = [prefix + _route(model, protocol, i) for i in ids], _zipf(len(ids))
        else:
            paths, path_weights = [prefix + _route(model, protocol)], None
        endpoints.append(
            Endpoint(
                name=f"{model.name} {protocol}",
                model=model.name,
                weight=(weights or {}).get(model.name, 1.0),
                paths=paths,
                path_weights=path_weights,
                bodies=[_body(model, protocol, rows, rng) for _ in range(BODIES_PER_ENDPOINT)],
                expect='"outputs"' if protocol == "v2" else '"predictions"',
            )
        )
    return Scenario(
        base_url=base_url.rstrip("/"),
        endpoints=endpoints,
        headers=_headers(api_key),
        protocol=protocol,
        rows_per_request=rows,
        metrics_path=f"{prefix}/metrics",
    )


def from_url(url: str, payload: Path, *, api_key: str | None = None) -> Scenario:
    """Every request POSTs the payload file to the URL."""
    if not _is_http(url):
        raise ScenarioError(f"{url!r} is neither an app spec (.yaml) nor an http(s) URL")
    try:
        body = payload.read_text()
        json.loads(body)
    except OSError as exc:
        raise ScenarioError(f"--payload {payload}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ScenarioError(f"--payload {payload}: not JSON ({exc})") from None
    return from_bodies(url, [body], api_key=api_key)


def from_bodies(url: str, bodies: list[str], *, expect: str | None = None, api_key: str | None = None) -> Scenario:
    """Every request POSTs one of the JSON `bodies`, in turn, to the URL; a 200 without `expect` counts as failed."""
    if not _is_http(url):
        raise ScenarioError(f"{url!r} is not an http(s) URL")
    if not bodies:
        raise ScenarioError(f"{url}: no request body to send")
    for i, body in enumerate(bodies):
        try:
            json.loads(body)
        except ValueError as exc:
            raise ScenarioError(f"{url}: body {i} is not JSON ({exc})") from None
    parts = urlsplit(url)
    path = parts.path or "/"
    match = re.search(r"/models/([^/:]+)", path)
    return Scenario(
        base_url=f"{parts.scheme}://{parts.netloc}",
        endpoints=[
            Endpoint(
                name=f"POST {path}",
                model=match.group(1) if match else None,
                paths=[path + (f"?{parts.query}" if parts.query else "")],
                bodies=bodies,
                expect=expect,
            )
        ],
        headers=_headers(api_key),
        protocol="v2" if "/v2/" in path else "v1" if "/v1/" in path else "custom",
    )


def _is_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
