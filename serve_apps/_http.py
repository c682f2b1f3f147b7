"""The ingress's HTTP surface: the FastAPI app its routes hang on, how errors are answered, which origins
are refused, what the inference bodies look like, and the front door its own listener serves.

Everything here is module-level because `serve.ingress(api)` (in ingress.py)
freezes `api` when it decorates the Ingress class: handlers and middleware
must be registered before that, which importing this module does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from ray import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount

from groundwork.net import is_loopback_host
from groundwork.version import VERSION

from .request_error import RequestError
from .tensors import new_request_id, valid_request_id

__all__ = [
    "INDEX_BODY",
    "INFER_ROUTES",
    "LINGER_MAX_BYTES",
    "LINGER_MAX_S",
    "V1_BODY",
    "V2_BODY",
    "VERSION_HEADER",
    "ModelFailed",
    "api",
    "discard_rest",
    "error",
    "front_door",
    "index_wants_ready_only",
    "is_json",
    "json_body_doc",
    "json_response",
    "refuse_by_origin",
    "request_id_of",
]

logger = logging.getLogger("ray.serve")

# /docs and /redoc load Swagger UI and ReDoc from the app itself (FastAPI's own pages pull them from a CDN,
# and ReDoc's fonts from Google): the docs work offline, behind a firewall, and ask nothing of third parties.
api = FastAPIOffline(
    title="modelfleet",
    summary="KServe V1 and Open Inference Protocol V2 endpoints for the models of one modelfleet app.",
    version=VERSION,
    swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from Swagger's online validator
)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


@api.exception_handler(RequestError)
async def request_error(_: Request, exc: RequestError) -> JSONResponse:
    response = error(exc.status, str(exc))
    response.headers.update(exc.headers or {})
    return response


@api.exception_handler(StarletteHTTPException)
async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = {404: "no such route; see /docs", 405: "method not allowed for this route; see /docs"}
    return error(exc.status_code, message.get(exc.status_code, str(exc.detail)))


@api.exception_handler(RequestValidationError)
async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error(422, f"{where}: {first.get('msg', 'invalid request')}")


class ModelFailed(Exception):
    def __init__(self, model: str, request_id: str):
        self.model, self.request_id = model, request_id


@api.exception_handler(ModelFailed)
async def model_failed(_: Request, exc: ModelFailed) -> JSONResponse:
    return error(
        500,
        f"model {exc.model!r} failed on this request; the server logs hold the traceback under request id "
        f"{exc.request_id}",
        request_id=exc.request_id,
    )


def request_id_of(request: Request) -> str:
    """The caller's x-request-id if it is safe to echo in a header and a log line, else a new one."""
    given = request.headers.get("x-request-id")
    return given if valid_request_id(given) else new_request_id()


@api.exception_handler(Exception)
async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request)
    logger.error("ingress error on request %s", request_id, exc_info=exc)
    return error(
        500, f"internal error; the server logs hold the traceback under request id {request_id}", request_id=request_id
    )


VERSION_HEADER = "x-modelfleet-model-version"  # which version of the model answered (V1 bodies cannot say)


def json_response(payload: dict, request_id: str, model_version: str | None = None) -> Response:
    headers = {"x-request-id": request_id}
    if model_version is not None:
        headers[VERSION_HEADER] = model_version
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


# Only JSON: a web page can send a form or text/plain to a local server without a CORS preflight,
# but not application/json. (curl -d sends a form type unless told -H 'Content-Type: application/json'.)
def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


# A client that sent a too-large body before reading our answer gets a connection reset instead of
# the 413 if we close with its bytes unread; read and drop them first, within bounds (nginx's lingering close).
LINGER_MAX_BYTES = 256 * 1024 * 1024
LINGER_MAX_S = 10.0


async def discard_rest(request: Request) -> None:
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


def refuse_by_origin(scope: dict, keyless: bool) -> RequestError | None:
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
    """ASGI middleware applying `refuse_by_origin` on Ray's proxy path (the listener applies it itself)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            ingress: Any = serve.get_replica_context().servable_object  # the Ingress, once Serve has built it
            refusal = refuse_by_origin(scope, keyless=not ingress.keys.enabled) if ingress is not None else None
            if refusal is not None:
                await error(refusal.status, str(refusal))(scope, receive, send)
                return
        await self.app(scope, receive, send)


api.add_middleware(_OriginGuard)
# The bodies the inference routes read themselves, described for /docs and for API fuzzers (schemathesis).
V2_BODY = {
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
V1_BODY = {
    "type": "object",
    "required": ["instances"],
    "properties": {"instances": {"type": "array", "minItems": 1, "description": "One row per instance."}},
}


# The repository extension's index request (Triton's clients send none): which models to list.
INDEX_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"ready": {"type": "boolean", "description": "Only the models ready for inference."}},
}


def json_body_doc(schema: dict, required: bool = True) -> dict:
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def index_wants_ready_only(body: Any) -> bool:
    """A `POST /v2/repository/index` body (None when empty) -> whether only ready models are asked for."""
    if body is None:
        return False
    if not isinstance(body, dict):
        raise RequestError(422, 'the body must be a JSON object, {"ready": true|false}, or empty')
    unknown = sorted(str(k)[:100] for k in body if k != "ready")[:10]
    if unknown:
        raise RequestError(422, f'unknown field(s) {unknown}; the index takes only "ready"')
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise RequestError(422, f'"ready" must be true or false, got {str(ready)[:100]!r}')
    return ready


INFER_ROUTES = (  # the two hot routes, as FastAPI matches them (uvicorn has already percent-decoded the path)
    (re.compile(r"/v2/models/([^/]+)/infer"), "infer_v2"),
    (re.compile(r"/v1/models/([^/]+):predict"), "predict_v1"),
)


async def error_response(request: Request, exc: Exception) -> Response:
    """What `api`'s exception handlers answer, for requests that bypass its router."""
    if isinstance(exc, RequestError):
        return await request_error(request, exc)
    if isinstance(exc, ModelFailed):
        return await model_failed(request, exc)
    return await unexpected(request, exc)


def front_door(ingress: Any, prefix: str) -> Any:
    """The ASGI app the ingress's own listener serves: `api` at the app's route prefix, as Ray's proxy mounts it.

    POSTs to the two inference routes go straight to their handlers: FastAPI's
    router, dependency solving and middleware cost more than the echo itself
    (bench.ingress). Every other route, and anything unusual, takes FastAPI's path.
    """
    base = prefix.rstrip("/")

    async def not_found(request: Request, _: Exception) -> JSONResponse:
        return error(404, f"no route {request.url.path}; this app is under {prefix}")

    mounted = api if not base else Starlette(routes=[Mount(base, app=api)], exception_handlers={404: not_found})

    async def app(scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "POST" and path.startswith(base + "/"):
            for pattern, handler in INFER_ROUTES:
                match = pattern.fullmatch(path, len(base))
                if match:
                    # Every other route passes `api`'s _OriginGuard; these two skip `api`, so check here.
                    refusal = refuse_by_origin(scope, keyless=not ingress.keys.enabled)
                    if refusal is not None:
                        await error(refusal.status, str(refusal))(scope, receive, send)
                        return
                    request = Request(scope, receive)
                    try:
                        response = await getattr(ingress, handler)(match.group(1), request)
                    except Exception as exc:
                        response = await error_response(request, exc)
                    await response(scope, receive, send)
                    return
        await mounted(scope, receive, send)

    return app
