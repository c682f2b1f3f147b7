"""The HTTP front door: KServe V1 and Open Inference Protocol V2 over FastAPI.

The ingress owns everything a client can get wrong: body size, content type,
JSON syntax, and the tensors themselves (checked against the spec in
`tensors.py`). Models only ever see valid inputs, so an exception inside a
model is the server's fault: a 500 that carries a request id to find the
traceback in the logs. Every other error is a 4xx with `{"error": ...}`.

Requests reach it through Ray's proxy, or (under `modelfleet run`) through its
own listener on the app's port (`listener.py`, `_front_door`). Models run in
deployments of their own, one handle call away, or embedded in this process.
"""


import asyncio
import logging
import os
import re
import socket
import time
import uuid
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount

from .auth import KeyRing
from .deployment import ModelDeployment
from .listener import Listener
from .spec import AppSpec, ModelSpec, valid_model_id
from .tensors import RequestError, check_inputs, decode_v1, decode_v2, encode_v1, encode_v2, rows_of, tensor_metadata

__all__ = ["Ingress", "api"]

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="modelfleet",
    summary="KServe V1 and Open Inference Protocol V2 endpoints for the models of one modelfleet app.",
    version="0.1.0",
)


class _Metrics:
    """Per-ingress-replica Prometheus metrics (each replica exposes its own /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelfleet_requests", "Inference requests by model, protocol and HTTP status.",
            ["model", "protocol", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "modelfleet_request_latency_seconds", "Inference latency seen by the ingress.",
            ["model", "protocol"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.rows = Counter("modelfleet_rows", "Rows (batch items) inferred, by model.", ["model"], registry=self.registry)
        self.batch_rows = Histogram(
            "modelfleet_batch_rows", "Rows in the model batch that served each request (dynamic batching at work).",
            ["model"], registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        # Which replica answered this scrape: a scraper behind a shared port can tell replicas apart and sum them.
        Gauge("modelfleet_ingress_replica", "This ingress replica (each serves its own /metrics).", ["replica"], registry=self.registry).labels(
            f"{socket.gethostname()}:{os.getpid()}"
        ).set(1)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    response = _error(exc.status, str(exc))
    response.headers.update(exc.headers or {})
    return response


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = {404: "no such route; see /docs", 405: "method not allowed for this route; see /docs"}
    return _error(exc.status_code, message.get(exc.status_code, str(exc.detail)))


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error(422, f"{where}: {first.get('msg', 'invalid request')}")


class _ModelFailed(Exception):
    def __init__(self, model: str, request_id: str):
        self.model, self.request_id = model, request_id


@api.exception_handler(_ModelFailed)
async def _model_failed(_: Request, exc: _ModelFailed) -> JSONResponse:
    return _error(
        500,
        f"model {exc.model!r} failed on this request; the server logs hold the traceback under request id {exc.request_id}",
        request_id=exc.request_id,
    )


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    logger.error("ingress error on request %s", request_id, exc_info=exc)
    return _error(500, f"internal error; the server logs hold the traceback under request id {request_id}", request_id=request_id)


def _json(payload: dict, request_id: str) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json", headers={"x-request-id": request_id})


_JSON_TYPES = ("application/json", "application/x-www-form-urlencoded")  # the latter: curl -d's default
MULTIPLEX_HEADER = "serve_multiplexed_model_id"  # Ray Serve's own header name for model multiplexing


def _family_and_id(name: str) -> tuple[str, str | None]:
    """'merchant:m007' -> ('merchant', 'm007'); 'digits' -> ('digits', None)."""
    family, colon, model_id = name.partition(":")
    return family, (model_id if colon else None)


def _model_id(spec: ModelSpec, in_path: str | None, request: Request | None) -> str | None:
    """The multiplexed model id a request names (URL `family:id` or Ray's header), checked; None for other models."""
    header = request.headers.get(MULTIPLEX_HEADER) if request is not None else None
    if spec.multiplex is None:
        if in_path is not None:
            raise RequestError(404, f"model {spec.name!r} is not a multiplexed family, so it has no model {in_path!r}")
        return None  # a client may send the header to every model; only families use it
    if in_path is not None and header is not None and in_path != header:
        raise RequestError(400, f"the URL names model id {in_path!r} but the {MULTIPLEX_HEADER} header says {header!r}")
    model_id = in_path if in_path is not None else header
    if not model_id:
        raise RequestError(
            400, f"model {spec.name!r} is a family of models: name one, as /v2/models/{spec.name}:<model_id>/infer "
            f"or with the {MULTIPLEX_HEADER} header",
        )
    if not valid_model_id(model_id):
        raise RequestError(400, f"model id {model_id!r} is not valid: letters, digits, '_', '-' and '.', no '..', at most 128")
    return model_id


_INFER_ROUTES = (  # the two hot routes, as FastAPI matches them (uvicorn has already percent-decoded the path)
    (re.compile(r"/v2/models/([^/]+)/infer"), "infer_v2"),
    (re.compile(r"/v1/models/([^/]+):predict"), "predict_v1"),
)


async def _error_response(request: Request, exc: Exception) -> Response:
    """What `api`'s exception handlers answer, for requests that bypass its router."""
    if isinstance(exc, RequestError):
        return await _request_error(request, exc)
    if isinstance(exc, _ModelFailed):
        return await _model_failed(request, exc)
    return await _unexpected(request, exc)


def _front_door(ingress: Any, prefix: str) -> Any:
    """The ASGI app the ingress's own listener serves: `api` at the app's route prefix, as Ray's proxy mounts it.

    POSTs to the two inference routes go straight to their handlers: FastAPI's
    router, dependency solving and middleware cost more than the echo itself
    (bench.ingress). Every other route, and anything unusual, takes FastAPI's path.
    """
    base = prefix.rstrip("/")

    async def not_found(request: Request, _: Exception) -> JSONResponse:
        return _error(404, f"no route {request.url.path}; this app is under {prefix}")

    mounted = api if not base else Starlette(routes=[Mount(base, app=api)], exception_handlers={404: not_found})

    async def app(scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "POST" and path.startswith(base + "/"):
            for pattern, handler in _INFER_ROUTES:
                match = pattern.fullmatch(path, len(base))
                if match:
                    request = Request(scope, receive)
                    try:
                        response = await getattr(ingress, handler)(match.group(1), request)
                    except Exception as exc:
                        response = await _error_response(request, exc)
                    await response(scope, receive, send)
                    return
        await mounted(scope, receive, send)

    return app


# serve.ingress() freezes `api` and this class when it decorates: every handler
# and helper they use must be defined above this line.
@serve.ingress(api)
class Ingress:
    """Routes requests to model deployments through Ray Serve handles."""

    def __init__(
        self, app_spec: dict, models: dict[str, DeploymentHandle], keys: list[dict] | None = None, listen: dict | None = None,
    ):
        self.app_spec = AppSpec.model_validate(app_spec)
        self.keys = KeyRing.from_hashes(keys)
        self.specs: dict[str, ModelSpec] = {m.name: m for m in self.app_spec.models}
        self.handles = models
        # Embedded models answer in this process: no handle hop (see ModelSpec.embedded).
        self.embedded = {m.name: ModelDeployment(m.model_dump(mode="json")) for m in self.app_spec.models if m.embedded}
        self.max_body_bytes = int(self.app_spec.ingress.max_body_mb * 1024 * 1024)
        self.request_timeout_s = self.app_spec.ingress.request_timeout_s
        self.metrics = _Metrics()
        self.listen = listen
        self.listener: Listener | None = None
        if listen:
            # Routes resolve `self` through Serve's replica context, so accept only once Serve has set it.
            self.listener = Listener(_front_door(self, self.app_spec.route_prefix), listen["host"], listen["port"])
            self.listener.start(ready=lambda: serve.get_replica_context().servable_object is self)

    async def __del__(self) -> None:
        """Serve calls this when the replica stops: let the listener's in-flight requests finish."""
        listener = getattr(self, "listener", None)  # absent when the constructor failed early
        if listener is not None:
            await listener.stop()

    def describe(self) -> dict:
        """This app's own spec, key hashes and listen address (a handle method): what a rollback redeploys."""
        return {"spec": self.app_spec.model_dump(mode="json"), "keys": self.keys.hashes(), "listen": self.listen}

    # ---- request plumbing -------------------------------------------------

    def _authorize(self, request: Request, model: str | None, any_key: bool = False) -> None:
        """401 without a valid key; 403 when the key lacks the scope. No-op when no keys are configured."""
        if not self.keys.enabled:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestError(401, "missing API key: send `Authorization: Bearer <key>`", {"WWW-Authenticate": "Bearer"})
        key = self.keys.find(token.strip())
        if key is None:
            raise RequestError(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
        if not (any_key or key.allows(model)):
            need = f"invoke:{model}" if model else "admin"
            raise RequestError(403, f"key {key.name!r} lacks the scope this needs ({need})")

    def _authorized_model(self, request: Request, name: str, version: str | None = None) -> ModelSpec:
        """The model (or family, for 'family:id') a request names, once its key may use it.

        Authorizing first hides from a key what exists beyond its scopes.
        """
        name, _ = _family_and_id(name)
        self._authorize(request, name)
        spec = self.specs.get(name)
        if spec is None:
            raise RequestError(404, f"model {name!r} not found; this server has {sorted(self.specs)}")
        if version is not None and version != spec.version:
            raise RequestError(404, f"model {name!r} has no version {version!r}; it serves version {spec.version!r}")
        return spec

    async def _json_body(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RequestError(413, f"body of {declared} bytes exceeds the {self.max_body_bytes}-byte limit (ingress.max_body_mb)")
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in _JSON_TYPES and not ctype.endswith("+json"):
            raise RequestError(415, f"content type {ctype!r} is not supported; send application/json")
        body = bytearray()
        async for chunk in request.stream():  # enforce the limit when Content-Length lies or is absent
            body += chunk
            if len(body) > self.max_body_bytes:
                raise RequestError(413, f"body exceeds the {self.max_body_bytes}-byte limit (ingress.max_body_mb)")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestError(400, f"body is not valid JSON: {exc}") from None

    async def _infer(self, spec: ModelSpec, inputs: dict, protocol: str, request_id: str, model_id: str | None = None) -> dict:
        started = time.perf_counter()
        status = 200
        try:
            async with asyncio.timeout(self.request_timeout_s):  # no extra task per request, unlike wait_for
                outputs, batch_rows = await self._call(spec, inputs, model_id)
            self.metrics.batch_rows.labels(spec.name).observe(batch_rows)
            return outputs
        except (RequestError, RayTaskError) as exc:
            # A replica refusing the request (e.g. an unknown model id) raises a RequestError; Ray
            # delivers it wrapped, and the wrapper's message is a traceback: answer with the cause.
            cause = exc.cause if isinstance(exc, RayTaskError) else exc
            if not isinstance(cause, RequestError):
                status = 500
                logger.error("model %s failed on request %s: %s", spec.name, request_id, exc)
                raise _ModelFailed(spec.name, request_id) from None
            status = cause.status
            raise cause from None
        except asyncio.TimeoutError:
            status = 503
            raise RequestError(
                503, f"model {spec.name!r} did not answer within {self.request_timeout_s:g}s (ingress.request_timeout_s); "
                "it may be starting or failing", {"Retry-After": "5"},
            ) from None
        except BackPressureError:
            status = 503
            raise RequestError(
                503, f"model {spec.name!r} is at capacity (max_queued_requests); retry shortly", {"Retry-After": "1"}
            ) from None
        except (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError) as exc:
            status = 503
            raise RequestError(
                503, f"model {spec.name!r} is unavailable ({exc.__class__.__name__}); retry shortly", {"Retry-After": "5"}
            ) from None
        except Exception:
            status = 500
            logger.exception("model %s failed on request %s", spec.name, request_id)
            raise _ModelFailed(spec.name, request_id) from None
        finally:
            self.metrics.requests.labels(spec.name, protocol, str(status)).inc()
            self.metrics.latency.labels(spec.name, protocol).observe(time.perf_counter() - started)
            if status == 200:
                self.metrics.rows.labels(spec.name).inc(rows_of(inputs))

    async def _call(self, spec: ModelSpec, inputs: dict, model_id: str | None) -> tuple[dict, int]:
        local = self.embedded.get(spec.name)
        if local is not None:
            return await local.infer(inputs)
        handle = self.handles[spec.name]
        if model_id is not None:
            handle = handle.options(multiplexed_model_id=model_id)
        return await handle.infer.remote(inputs)

    # ---- inference --------------------------------------------------------

    @api.post("/v1/models/{name}:predict", summary="KServe V1 predict")
    async def predict_v1(self, name: str, request: Request) -> Response:
        spec = self._authorized_model(request, name)
        model_id = _model_id(spec, _family_and_id(name)[1], request)
        inputs = decode_v1(await self._json_body(request), spec)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        outputs = await self._infer(spec, inputs, "v1", request_id, model_id)
        return _json(encode_v1(outputs, spec), request_id)

    @api.post("/v2/models/{name}/infer", summary="Open Inference Protocol V2 infer ({name} may be family:model_id)")
    async def infer_v2(self, name: str, request: Request) -> Response:
        return await self._infer_v2(name, self._authorized_model(request, name), request)

    @api.post("/v2/models/{name}/versions/{version}/infer", summary="Open Inference Protocol V2 infer (versioned)")
    async def infer_v2_version(self, name: str, version: str, request: Request) -> Response:
        return await self._infer_v2(name, self._authorized_model(request, name, version), request)

    async def _infer_v2(self, name: str, spec: ModelSpec, request: Request) -> Response:
        model_id = _model_id(spec, _family_and_id(name)[1], request)
        inputs, request_id, only = decode_v2(await self._json_body(request), spec)
        outputs = await self._infer(spec, inputs, "v2", request_id, model_id)
        payload = encode_v2(outputs, spec, request_id, only)
        if model_id is not None:
            payload["model_name"] = f"{spec.name}:{model_id}"
        return _json(payload, request_id)

    # ---- Python callers ---------------------------------------------------

    async def infer(self, model: str, inputs: dict, model_id: str | None = None) -> dict:
        """For drivers holding `serve.get_app_handle(app)`: numpy arrays in, numpy arrays out.

        The same checks as HTTP (a RequestError names what is wrong), no API
        key: a caller that reaches the cluster's handles is already trusted.
        """
        name, in_name = _family_and_id(model)
        spec = self.specs.get(name)
        if spec is None:
            raise RequestError(404, f"model {name!r} not found; this server has {sorted(self.specs)}")
        model_id = _model_id(spec, model_id or in_name, None)
        return await self._infer(spec, check_inputs(inputs, spec), "handle", uuid.uuid4().hex, model_id)

    # ---- metadata and health ----------------------------------------------

    @api.get("/v2", summary="Server metadata")
    async def server_metadata(self, request: Request) -> dict:
        self._authorize(request, None, any_key=True)
        return {"name": "modelfleet", "version": api.version, "extensions": [], "models": sorted(self.specs)}

    # Liveness and readiness stay open: orchestrators' probes carry no keys.
    @api.get("/v2/health/live", summary="Server liveness")
    async def live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready", summary="Server readiness: every model has a running replica")
    async def ready(self) -> Response:
        states = await self._model_states()
        ready = all(s == "HEALTHY" for s in states.values())
        return JSONResponse({"ready": ready, "models": states}, status_code=200 if ready else 503)

    @api.get("/v2/models/{name}", summary="Model metadata")
    @api.get("/v2/models/{name}/versions/{version}", summary="Model metadata (versioned)")
    async def model_metadata(self, name: str, request: Request, version: str | None = None) -> dict:
        spec = self._authorized_model(request, name, version)
        return {
            "name": spec.name,
            "versions": [spec.version],
            "platform": f"modelfleet/{spec.format.value}",
            "inputs": tensor_metadata(spec.inputs),
            "outputs": tensor_metadata(spec.outputs),
        }

    @api.get("/v2/models/{name}/ready", summary="Model readiness")
    @api.get("/v2/models/{name}/versions/{version}/ready", summary="Model readiness (versioned)")
    async def model_ready(self, name: str, request: Request, version: str | None = None) -> Response:
        spec = self._authorized_model(request, name, version)
        state = (await self._model_states()).get(spec.name, "UNKNOWN")
        ready = state == "HEALTHY"
        return JSONResponse({"name": spec.name, "ready": ready, "state": state}, status_code=200 if ready else 503)

    @api.get("/v1/models/{name}", summary="KServe V1 model status")
    async def model_status_v1(self, name: str, request: Request) -> dict:
        spec = self._authorized_model(request, name)
        state = (await self._model_states()).get(spec.name, "UNKNOWN")
        return {"name": spec.name, "ready": state == "HEALTHY"}

    @api.get("/metrics", summary="Prometheus metrics of this ingress replica")
    async def metrics(self, request: Request) -> Response:
        self._authorize(request, None)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _model_states(self) -> dict[str, str]:
        app_name = serve.get_replica_context().app_name
        status = await asyncio.to_thread(serve.status)
        deployments = status.applications[app_name].deployments if app_name in status.applications else {}
        own = "HEALTHY"  # embedded models loaded with this replica, which is answering
        return {
            name: own if name in self.embedded else deployments[name].status.value if name in deployments else "UNKNOWN"
            for name in self.specs
        }
