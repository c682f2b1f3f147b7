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
from starlette.requests import ClientDisconnect
from starlette.routing import Mount

from groundwork.net import is_loopback_host
from groundwork.version import VERSION

from .auth import ApiKey, KeyRing
from .deployment import ModelDeployment
from .listener import Limits, Listener, Tls
from .spec import AppSpec, ModelSpec, valid_model_id
from .tensors import (
    RequestError,
    check_inputs,
    decode_v1,
    decode_v2,
    encode_v1,
    encode_v2,
    rows_of,
    tensor_metadata,
    valid_request_id,
)

__all__ = ["Ingress", "api"]

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="modelfleet",
    summary="KServe V1 and Open Inference Protocol V2 endpoints for the models of one modelfleet app.",
    version=VERSION,
)


class _Metrics:
    """Per-ingress-replica Prometheus metrics (each replica exposes its own /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelfleet_requests",
            "Inference requests by model, protocol and HTTP status.",
            ["model", "protocol", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelfleet_request_latency_seconds",
            "Inference latency seen by the ingress.",
            ["model", "protocol"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.rows = Counter(
            "modelfleet_rows", "Rows (batch items) inferred, by model.", ["model"], registry=self.registry
        )
        self.retries = Counter(
            "modelfleet_replica_retries",
            "Inference calls retried because their replica died before answering.",
            ["model"],
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "modelfleet_batch_rows",
            "Rows in the model batch that served each request (dynamic batching at work).",
            ["model"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        # Which replica answered this scrape: a scraper behind a shared port can tell replicas apart and sum them.
        Gauge(
            "modelfleet_ingress_replica",
            "This ingress replica (each serves its own /metrics).",
            ["replica"],
            registry=self.registry,
        ).labels(f"{socket.gethostname()}:{os.getpid()}").set(1)


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
        f"model {exc.model!r} failed on this request; the server logs hold the traceback under request id "
        f"{exc.request_id}",
        request_id=exc.request_id,
    )


def _request_id(request: Request) -> str:
    """The caller's x-request-id if it is safe to echo in a header and a log line, else a new one."""
    given = request.headers.get("x-request-id")
    return given if valid_request_id(given) else uuid.uuid4().hex


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = _request_id(request)
    logger.error("ingress error on request %s", request_id, exc_info=exc)
    return _error(
        500, f"internal error; the server logs hold the traceback under request id {request_id}", request_id=request_id
    )


def _json(payload: dict, request_id: str) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json", headers={"x-request-id": request_id})


# Only JSON: a web page can send a form or text/plain to a local server without a CORS preflight,
# but not application/json. (curl -d sends a form type unless told -H 'Content-Type: application/json'.)
def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


# A client that sent a too-large body before reading our answer gets a connection reset instead of
# the 413 if we close with its bytes unread; read and drop them first, within bounds (nginx's lingering close).
LINGER_MAX_BYTES = 256 * 1024 * 1024
LINGER_MAX_S = 10.0


async def _discard_rest(request: Request) -> None:
    read = 0
    try:
        async with asyncio.timeout(LINGER_MAX_S):
            async for chunk in request.stream():
                read += len(chunk)
                if read > LINGER_MAX_BYTES:
                    return
    except Exception:  # a client that hangs up or stalls (TimeoutError): nothing more to save
        return


_LOOPBACK_HOST_HEADER = re.compile(r"(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?", re.IGNORECASE)


def _refuse_by_origin(scope: dict, keyless: bool) -> RequestError | None:
    """Why a request must not be served from where it arrived, or None.

    `scope["server"]` is the local address the connection came in on. A
    keyless app answers only there on loopback; and on loopback, only to a
    loopback Host name, so a web page that rebinds its own domain to
    127.0.0.1 cannot read from the local server.
    """
    server = scope.get("server")
    on_loopback = is_loopback_host(server[0] if server else None)
    if keyless and not on_loopback:
        return RequestError(
            403,
            "this app has no API keys, so it answers on loopback only; configure keys "
            "(ingress.keys_file or MODELFLEET_API_KEYS) to serve other addresses",
        )
    if on_loopback:
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
        if host is not None and not _LOOPBACK_HOST_HEADER.fullmatch(host):
            return RequestError(
                400,
                f"Host {host[:100]!r} is not a name of this loopback server; use 127.0.0.1, localhost or [::1] "
                "(other names are refused so web pages cannot reach it by DNS rebinding)",
            )
    return None


class _OriginGuard:
    """ASGI middleware applying `_refuse_by_origin` on Ray's proxy path (the listener applies it itself)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            ingress = serve.get_replica_context().servable_object
            refusal = _refuse_by_origin(scope, keyless=not ingress.keys.enabled) if ingress is not None else None
            if refusal is not None:
                await _error(refusal.status, str(refusal))(scope, receive, send)
                return
        await self.app(scope, receive, send)


api.add_middleware(_OriginGuard)
MULTIPLEX_HEADER = "serve_multiplexed_model_id"  # Ray Serve's own header name for model multiplexing
STATES_TTL_S = 1.0  # how stale readiness may be: probes must not each cost a controller round trip


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
            400,
            f"model {spec.name!r} is a family of models: name one, as /v2/models/{spec.name}:<model_id>/infer "
            f"or with the {MULTIPLEX_HEADER} header",
        )
    if not valid_model_id(model_id):
        raise RequestError(
            400, f"model id {model_id!r} is not valid: letters, digits, '_', '-' and '.', no '..', at most 128"
        )
    return model_id


# The bodies the inference routes read themselves, described for /docs and for API fuzzers (schemathesis).
_V2_BODY = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string", "description": "Echoed in the response and its x-request-id header."},
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": ["BOOL", "INT32", "INT64", "FP32", "FP64", "BYTES"]},
                    "data": {"type": "array", "description": "Row-major values, flat or nested."},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        },
    },
}
_V1_BODY = {
    "type": "object",
    "required": ["instances"],
    "properties": {"instances": {"type": "array", "minItems": 1, "description": "One row per instance."}},
}


def _json_body_doc(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


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
                    # Every other route passes `api`'s _OriginGuard; these two skip `api`, so check here.
                    refusal = _refuse_by_origin(scope, keyless=not ingress.keys.enabled)
                    if refusal is not None:
                        await _error(refusal.status, str(refusal))(scope, receive, send)
                        return
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
        self,
        app_spec: dict,
        models: dict[str, DeploymentHandle],
        keys: list[dict] | None = None,
        listen: dict | None = None,
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
        self._states: dict[str, str] = {}
        self._states_at = -float("inf")
        self._states_lock = asyncio.Lock()
        if listen and not self.keys.enabled and not is_loopback_host(listen["host"]):
            raise RuntimeError(
                f"refusing to serve models on {listen['host']}:{listen['port']} without API keys; "
                "configure ingress.keys_file or MODELFLEET_API_KEYS, or listen on loopback"
            )
        if listen:
            # Routes resolve `self` through Serve's replica context, so accept only once Serve has set it.
            ingress = self.app_spec.ingress
            limits = Limits(ingress.header_timeout_s, ingress.body_timeout_s, ingress.max_connections)
            tls = Tls(ingress.tls.cert_file, ingress.tls.key_file, ingress.tls.client_ca_file) if ingress.tls else None
            self.listener = Listener(
                _front_door(self, self.app_spec.route_prefix), listen["host"], listen["port"], limits, tls
            )
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

    def _authorize(self, request: Request, model: str | None, any_key: bool = False) -> ApiKey | None:
        """The caller's key: 401 without a valid one, 403 when it lacks the scope. None when no keys are configured."""
        if not self.keys.enabled:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestError(
                401, "missing API key: send `Authorization: Bearer <key>`", {"WWW-Authenticate": "Bearer"}
            )
        key = self.keys.find(token.strip())
        if key is None:
            raise RequestError(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
        if not (any_key or key.allows(model)):
            need = f"invoke:{model}" if model else "admin"
            raise RequestError(403, f"key {key.name!r} lacks the scope this needs ({need})")
        return key

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
            await _discard_rest(request)
            raise RequestError(
                413,
                f"body of {declared} bytes exceeds the {self.max_body_bytes}-byte limit (ingress.max_body_mb)",
                {"Connection": "close"},
            )
        ctype = request.headers.get("content-type")
        if not _is_json(ctype):
            await _discard_rest(request)
            given = f"content type {ctype[:100]!r} is" if ctype else "a body without a Content-Type is"
            raise RequestError(
                415, f"{given} not accepted; send Content-Type: application/json", {"Connection": "close"}
            )
        body = bytearray()
        try:
            async for chunk in request.stream():  # enforce the limit when Content-Length lies or is absent
                body += chunk
                if len(body) > self.max_body_bytes:
                    await _discard_rest(request)
                    raise RequestError(
                        413,
                        f"body exceeds the {self.max_body_bytes}-byte limit (ingress.max_body_mb)",
                        {"Connection": "close"},
                    )
        except ClientDisconnect:  # hung up, or cut off by the listener's body deadline: nobody reads the answer
            raise RequestError(400, "the client went away before its body arrived") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestError(400, f"body is not valid JSON: {exc}") from None

    async def _infer(
        self, spec: ModelSpec, inputs: dict, protocol: str, request_id: str, model_id: str | None = None
    ) -> dict:
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
        except TimeoutError:
            status = 503
            raise RequestError(
                503,
                f"model {spec.name!r} did not answer within {self.request_timeout_s:g}s (ingress.request_timeout_s); "
                "it may be starting or failing",
                {"Retry-After": "5"},
            ) from None
        except BackPressureError:
            status = 503
            raise RequestError(
                503, f"model {spec.name!r} is at capacity (max_queued_requests); retry shortly", {"Retry-After": "1"}
            ) from None
        except (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError) as exc:
            status = 503
            raise RequestError(
                503,
                f"model {spec.name!r} is unavailable ({exc.__class__.__name__}); retry shortly",
                {"Retry-After": "5"},
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
        try:
            return await handle.infer.remote(inputs)
        except (ActorDiedError, ActorUnavailableError):
            if not self.app_spec.ingress.retry_on_replica_death:
                raise
            # The replica died (or became unreachable) before it answered. Inference is a pure function
            # of its inputs, so asking again, once, of a replica Serve still holds live is safe; a
            # second failure is the caller's 503 (see _infer).
            self.metrics.retries.labels(spec.name).inc()
            logger.warning("model %s: a replica died before answering; retrying once on another", spec.name)
            return await handle.infer.remote(inputs)

    # ---- inference --------------------------------------------------------

    @api.post("/v1/models/{name}:predict", summary="KServe V1 predict", openapi_extra=_json_body_doc(_V1_BODY))
    async def predict_v1(self, name: str, request: Request) -> Response:
        spec = self._authorized_model(request, name)
        model_id = _model_id(spec, _family_and_id(name)[1], request)
        inputs = decode_v1(await self._json_body(request), spec)
        request_id = _request_id(request)
        outputs = await self._infer(spec, inputs, "v1", request_id, model_id)
        return _json(encode_v1(outputs, spec), request_id)

    @api.post(
        "/v2/models/{name}/infer",
        summary="Open Inference Protocol V2 infer ({name} may be family:model_id)",
        openapi_extra=_json_body_doc(_V2_BODY),
    )
    async def infer_v2(self, name: str, request: Request) -> Response:
        return await self._infer_v2(name, self._authorized_model(request, name), request)

    @api.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="Open Inference Protocol V2 infer (versioned)",
        openapi_extra=_json_body_doc(_V2_BODY),
    )
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
        key = self._authorize(request, None, any_key=True)
        # A key sees the models it may invoke, and nothing of the others.
        visible = sorted(name for name in self.specs if key is None or key.allows(name))
        return {"name": "modelfleet", "version": api.version, "extensions": [], "models": visible}

    # Liveness and readiness stay open: orchestrators' probes carry no keys.
    @api.get("/v2/health/live", summary="Server liveness")
    async def live(self) -> dict:
        return {"live": True}

    @api.get(
        "/v2/health/ready",
        summary="Server readiness: every model has a running replica (no model names: probes carry no key)",
    )
    async def ready(self) -> Response:
        ready = all(s == "HEALTHY" for s in (await self._model_states()).values())
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

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
        """Each model's state, asked of Serve's controller at most once a second however often probes come."""
        if time.monotonic() - self._states_at > STATES_TTL_S:
            async with self._states_lock:  # one question in flight; the others wait for its answer
                if time.monotonic() - self._states_at > STATES_TTL_S:
                    self._states = await self._ask_model_states()
                    self._states_at = time.monotonic()
        return self._states

    async def _ask_model_states(self) -> dict[str, str]:
        app_name = serve.get_replica_context().app_name
        status = await asyncio.to_thread(serve.status)
        deployments = status.applications[app_name].deployments if app_name in status.applications else {}
        own = "HEALTHY"  # embedded models loaded with this replica, which is answering
        return {
            name: own if name in self.embedded else deployments[name].status.value if name in deployments else "UNKNOWN"
            for name in self.specs
        }
