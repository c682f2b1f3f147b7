"""The HTTP front door: KServe V1 and Open Inference Protocol V2 over FastAPI.

The ingress owns everything a client can get wrong: body size, content type,
JSON syntax, and the tensors themselves (checked against the spec in
`tensors.py`). Models only ever see valid inputs, so an exception inside a
model is the server's fault: a 500 that carries a request id to find the
traceback in the logs. Every other error is a 4xx with `{"error": ...}`.

Requests reach it through Ray's proxy, or (under `modelfleet run`) through its
own listener on the app's port (`listener.py`, `_http.front_door`). Models run in
deployments of their own, one handle call away, or embedded in this process.
Requests for one deployment that wait at the same moment share one handle call
(coalescing.py; `ingress.coalesce`), which goes over a Unix socket instead when
all of the deployment's replicas run on this node (local_hop.py; `ingress.local_hop`).
"""

import asyncio
import logging
import os
import random
import socket
import time
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from groundwork.net import is_loopback_host
from monitoring.audit import AuditLog, BackgroundAuditWriter, audit_folder, query
from monitoring.payload_log import PayloadLogWriter

from ._deployment_states import DeploymentStates
from ._http import (
    INDEX_BODY,
    V1_BODY,
    V2_BODY,
    ModelFailed,
    api,
    discard_rest,
    front_door,
    index_wants_ready_only,
    is_json,
    json_body_doc,
    json_response,
    request_id_of,
)
from ._ingress_metrics import IngressMetrics
from ._model_ids import family_and_id, model_id_of
from ._replica_console import keep_serve_internals_off_the_console
from .auth import ApiKey, KeyRing
from .coalescing import Coalescer, hop, model_hop, once_more_if_the_replica_died
from .deployment import ModelDeployment
from .listener import Limits, Listener, Tls
from .local_hop import ReplicaLost
from .monitor import ReplicaMetrics
from .request_error import RequestError
from .rollout import DESK_NAMESPACE, LOOK_S, SYNC_S, VersionTally, agreement, desk_name
from .spec import AppSpec, ModelSpec
from .status_page import render_status
from .tensors import check_inputs, decode_v1, decode_v2, encode_v1, encode_v2, new_request_id, rows_of, tensor_metadata
from .traffic import UNIT_HEADER, ModelTraffic, Route, candidate_deployment

__all__ = ["Ingress", "api"]

logger = logging.getLogger("ray.serve")

STATES_TTL_S = 1.0  # how stale readiness may be: probes must not each cost a controller round trip
DENIED_AUDIT_FILES = 100  # 10 MiB each: a flood of denied requests keeps the last ~3 million lines
MAX_SHADOWS_IN_FLIGHT = 64  # copies for shadow versions beyond this are skipped (and counted): never a backlog


def _spec_traffic(model: ModelSpec) -> ModelTraffic:
    """A model's split as its spec states it (`candidates:`, each a deployment of this app)."""
    routes = tuple(
        Route(str(c.version), candidate_deployment(model.name, str(c.version)), None, c.weight, c.shadow)
        for c in model.candidates
    )
    return ModelTraffic(model.version, routes, sticky=model.split == "sticky")


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
        standby: DeploymentHandle | None = None,
    ):
        keep_serve_internals_off_the_console()
        self.app_spec = AppSpec.model_validate(app_spec)
        self.keys = KeyRing.from_hashes(keys)
        # Denied requests go to the audit log of the node this replica runs on (monitoring/audit.py), by a writer
        # thread: a bounded queue, and a bounded number of files, whatever hostile callers send.
        self.denials = (
            BackgroundAuditWriter(AuditLog(audit_folder(), keep_files=DENIED_AUDIT_FILES))
            if self.keys.enabled
            else None
        )
        self.specs: dict[str, ModelSpec] = {m.name: m for m in self.app_spec.models}
        self.handles = models
        # Embedded models answer in this process: no handle hop (see ModelSpec.embedded).
        self.embedded = {m.name: ModelDeployment(m.model_dump(mode="json")) for m in self.app_spec.models if m.embedded}
        self.max_body_bytes = int(self.app_spec.ingress.max_body_mb * 1024 * 1024)
        self.request_timeout_s = self.app_spec.ingress.request_timeout_s
        self.meters = IngressMetrics(self.app_spec.slo_bounds_s())  # not `metrics`: that name is the /metrics route
        # Payload logs (monitoring/payload_log.py): one writer per model with `logging:`, each with its own thread.
        self.payload_logs = {
            m.name: PayloadLogWriter(m.logging, self.app_spec.name)
            for m in self.app_spec.models
            if m.logging is not None
        }
        self._payload_drops: dict[str, int] = {}
        # What this replica counts goes to the app's monitor (monitor.py), whose sum over replicas /metrics answers.
        self.pusher = ReplicaMetrics("ingress", self.meters.registry, app_spec, refresh=self._count_payload_drops)
        self.pusher.start_pushing()
        self.listen = listen
        self.listener: Listener | None = None
        self.states = DeploymentStates(STATES_TTL_S)
        # Versions: a model with candidates routes by its traffic (traffic.py), from its spec or a rollout's desk.
        self.candidate_specs = {candidate_deployment(c.name, c.version): c for c in self.app_spec.candidate_specs()}
        self.spec_traffic = {m.name: _spec_traffic(m) for m in self.app_spec.models if m.candidates}
        self.traffic: dict[str, ModelTraffic] = dict(self.spec_traffic)
        self.tallies: dict[tuple[str, str], VersionTally] = {}  # (model, version) of models with candidates
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}"
        self._desk_task: asyncio.Task[None] | None = None
        self._shadows_in_flight = 0
        self.hops: dict[str, Coalescer] = {}
        if self.app_spec.ingress.coalesce:
            self.hops = {
                name: self._model_hop(h, self.candidate_specs.get(name) or self.specs[name], name)
                for name, h in models.items()
            }
        # Scaled-to-zero models a standby replica answers for while they have no replica of their own (standby.py).
        self.standby: Coalescer | None = None
        self.standby_models = {m.name for m in self.app_spec.standby_models()} if standby is not None else set()
        self._waking: dict[str, asyncio.Task[None]] = {}
        if standby is not None:
            assert self.app_spec.standby is not None
            self.standby = hop(
                standby,
                "standby",
                self.states,
                max_ongoing_requests=max(self.specs[name].max_ongoing_requests for name in self.standby_models),
                on_call=self.meters.call_requests.labels("standby").observe,
            )
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
                front_door(self, self.app_spec.route_prefix), listen["host"], listen["port"], limits, tls
            )
            self.listener.start(ready=lambda: serve.get_replica_context().servable_object is self)

    async def __del__(self) -> None:
        """Serve calls this when the replica stops: let the listener's in-flight requests finish."""
        listener = getattr(self, "listener", None)  # absent when the constructor failed early
        if listener is not None:
            await listener.stop()
        denials = getattr(self, "denials", None)
        if denials is not None:
            await asyncio.to_thread(denials.close)
        for writer in getattr(self, "payload_logs", {}).values():
            await asyncio.to_thread(writer.close)
        pusher = getattr(self, "pusher", None)
        if pusher is not None:
            await pusher.goodbye()
            for model in self.embedded.values():
                await model.meters.goodbye()

    def _count_payload_drops(self) -> None:
        """What the payload log writers dropped since the last push, into modelfleet_payload_log_dropped_total."""
        for writer in self.payload_logs.values():
            for model, dropped in list(writer.dropped_by_model.items()):
                new = dropped - self._payload_drops.get(model, 0)
                if new > 0:
                    self.meters.payload_dropped.labels(model).inc(new)
                    self._payload_drops[model] = dropped

    def _model_hop(
        self, handle: DeploymentHandle, spec: ModelSpec, deployment: str, app: str | None = None
    ) -> Coalescer:
        return model_hop(
            handle,
            spec,
            self.states,
            self._retry(spec.name),
            self.meters.call_requests.labels(spec.name).observe,
            local_hop=self.app_spec.ingress.local_hop,
            on_local_call=self.meters.local_calls.labels(spec.name).inc,
            deployment=deployment,
            app=app,
        )

    def describe(self) -> dict:
        """This app's own spec, key hashes and listen address (a handle method): what a rollback redeploys."""
        return {"spec": self.app_spec.model_dump(mode="json"), "keys": self.keys.hashes(), "listen": self.listen}

    # ---- request plumbing -------------------------------------------------

    def _authorize(self, request: Request, model: str | None, any_key: bool = False) -> ApiKey | None:
        """The caller's key: 401 without a valid one, 403 when it lacks the scope (each denial a line in the audit
        log). None when no keys are configured."""
        if not self.keys.enabled:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self._denied(request, "key:none", model, "no key")
            raise RequestError(
                401, "missing API key: send `Authorization: Bearer <key>`", {"WWW-Authenticate": "Bearer"}
            )
        key = self.keys.find(token.strip())
        if key is None:
            self._denied(request, "key:?", model, "invalid key")  # never the key itself
            raise RequestError(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
        if not (any_key or key.allows(model)):
            need = f"invoke:{model}" if model else "admin"
            self._denied(request, f"key:{key.name}", model, f"lacks {need}")
            raise RequestError(403, f"key {key.name!r} lacks the scope this needs ({need})")
        return key

    def _denied(self, request: Request, actor: str, model: str | None, why: str) -> None:
        """A denied request's audit line, queued: never slower for a flood of them (a full queue drops, counted)."""
        if self.denials is None:
            return
        self.denials.submit(
            "request.denied",
            f"{self.app_spec.name}{request.url.path}"[:200],
            "denied",
            actor=actor,
            source=request.client.host if request.client else None,
            request_id=request_id_of(request),
            details={"why": why, "model": model} if model else {"why": why},
        )

    def _authorized_model(self, request: Request, name: str, version: str | None = None) -> ModelSpec:
        """The model (or family, for 'family:id') a request names, once its key may use it.

        Authorizing first hides from a key what exists beyond its scopes.
        """
        return self._target(request, name, version)[0]

    def _target(self, request: Request, name: str, version: str | None = None) -> tuple[ModelSpec, Route | None]:
        """The model a request names, once its key may use it, and the candidate that answers it (None: the model's
        own version): the one its URL names, else its traffic's pick."""
        name, _ = family_and_id(name)
        key = self._authorize(request, name)
        spec = self.specs.get(name)
        if spec is None:
            raise RequestError(404, f"model {name!r} not found; this server has {sorted(self.specs)}")
        traffic = self.traffic.get(name)
        if version is not None:
            route = traffic.route(version) if traffic is not None else None
            if version != spec.version and route is None:
                serving = traffic.versions() if traffic is not None else [spec.version]
                raise RequestError(404, f"model {name!r} has no version {version!r}; it serves version(s) {serving}")
            return spec, route
        if traffic is None:
            return spec, None
        unit = request.headers.get(UNIT_HEADER) or (key.name if key is not None else None)
        return spec, traffic.pick(name, unit)

    async def _json_body(self, request: Request, optional: bool = False) -> Any:
        """The parsed body; None for no body at all when `optional`."""
        declared = request.headers.get("content-length")
        if optional and (declared == "0" or (declared is None and "transfer-encoding" not in request.headers)):
            return None
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await discard_rest(request)
            raise RequestError(
                413,
                f"body of {declared} bytes exceeds the {self.max_body_bytes}-byte limit (ingress.max_body_mb)",
                {"Connection": "close"},
            )
        ctype = request.headers.get("content-type")
        if not is_json(ctype):
            await discard_rest(request)
            given = f"content type {ctype[:100]!r} is" if ctype else "a body without a Content-Type is"
            raise RequestError(
                415, f"{given} not accepted; send Content-Type: application/json", {"Connection": "close"}
            )
        body = bytearray()
        try:
            async for chunk in request.stream():  # enforce the limit when Content-Length lies or is absent
                body += chunk
                if len(body) > self.max_body_bytes:
                    await discard_rest(request)
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
        self,
        spec: ModelSpec,
        inputs: dict,
        protocol: str,
        request_id: str,
        model_id: str | None = None,
        route: Route | None = None,
    ) -> dict:
        """The outputs of the model's version `route` (None: its own) for `inputs`; shadow versions get a copy."""
        if self._desk_task is None:
            self._desk_task = asyncio.get_running_loop().create_task(self._follow_desk(), name="rollout-desk")
        started = time.perf_counter()
        status, batch_rows = 200, 0
        version = route.version if route is not None else spec.version
        in_flight = self.meters.in_flight.labels(spec.name, version)
        in_flight.inc()
        if self.states.running_replicas(route.deployment if route else spec.name, max_age_s=5.0) == 0:
            self.meters.cold_starts.labels(spec.name, version).inc()
        try:
            async with asyncio.timeout(self.request_timeout_s):  # no extra task per request, unlike wait_for
                outputs, batch_rows = await self._call(spec, inputs, model_id, route)
            if spec.drift is not None and (spec.drift.sample_rate >= 1 or random.random() < spec.drift.sample_rate):
                self.pusher.tap(spec.name, version, inputs, rows_of(inputs))  # for the monitor's drift windows
            payload_log = self.payload_logs.get(spec.name)
            if payload_log is not None:
                payload_log.offer(spec.name, version, request_id, inputs, outputs)  # sampled; never waits
            traffic = self.traffic.get(spec.name)
            if traffic is not None:
                for shadow in traffic.shadows(route):
                    self._shadow(spec, shadow, inputs, outputs)
            return outputs
        except (RequestError, RayTaskError) as exc:
            # A replica refusing the request (e.g. an unknown model id) raises a RequestError; Ray
            # delivers it wrapped, and the wrapper's message is a traceback: answer with the cause.
            cause = exc.cause if isinstance(exc, RayTaskError) else exc
            if not isinstance(cause, RequestError):
                status = 500
                logger.error("model %s failed on request %s: %s", spec.name, request_id, exc)
                raise ModelFailed(spec.name, request_id) from None
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
        except (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError, ReplicaLost) as exc:
            status = 503
            raise RequestError(
                503,
                f"model {spec.name!r} is unavailable ({exc.__class__.__name__}); retry shortly",
                {"Retry-After": "5"},
            ) from None
        except Exception:
            status = 500
            logger.exception("model %s failed on request %s", spec.name, request_id)
            raise ModelFailed(spec.name, request_id) from None
        finally:
            in_flight.dec()
            seconds = time.perf_counter() - started
            self.meters.answered(
                spec.name, version, protocol, status, seconds, rows_of(inputs) if status == 200 else 0, batch_rows
            )
            if spec.name in self.traffic:
                self._tally(spec.name, version).record(status, seconds)

    def _tally(self, model: str, version: str) -> VersionTally:
        tally = self.tallies.get((model, version))
        if tally is None:
            tally = self.tallies[(model, version)] = VersionTally()
        return tally

    def _shadow(self, spec: ModelSpec, route: Route, inputs: dict, answer: dict) -> None:
        """A copy of a request for a shadow version, in the background; its answer is only compared with `answer`."""
        if self._shadows_in_flight >= MAX_SHADOWS_IN_FLIGHT:
            self.meters.shadow_requests.labels(spec.name, route.version, "skipped").inc()
            return
        self._shadows_in_flight += 1

        async def copy() -> None:
            started, compared = time.perf_counter(), None
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    outputs, _ = await self._call(spec, inputs, None, route)
                compared = agreement(answer, outputs)
                rows, agreed, _ = compared
                self.meters.shadow_rows.labels(spec.name, route.version, "agreed").inc(agreed)
                self.meters.shadow_rows.labels(spec.name, route.version, "differed").inc(rows - agreed)
            except Exception as exc:  # the shadow's failure is its own: the caller has its answer already
                logger.info("shadow version %s of model %s failed: %s", route.version, spec.name, exc)
            finally:
                self._shadows_in_flight -= 1
                outcome = "failed" if compared is None else "answered"
                self.meters.shadow_requests.labels(spec.name, route.version, outcome).inc()
                self._tally(spec.name, route.version).record_shadow(time.perf_counter() - started, compared)

        asyncio.get_running_loop().create_task(copy(), name=f"shadow-{spec.name}-{route.version}")

    async def _follow_desk(self) -> None:
        """Each SYNC_S: hand this replica's tallies to the app's rollout desk (rollout.py) and route by its traffic;
        without a desk (looked for each LOOK_S), by the specs' own. Started by the first request."""
        import ray

        desk = None
        while True:
            try:
                if desk is None:
                    desk = await asyncio.to_thread(self._find_desk, ray)
                if desk is None:
                    self._route_by({})
                else:
                    tallies: dict[str, dict[str, dict]] = {}
                    for (model, version), tally in self.tallies.items():
                        tallies.setdefault(model, {})[version] = tally.to_dict()
                    self._route_by(await desk.sync.remote(self.replica_id, tallies))
            except Exception as exc:  # the desk went away (a rollout ended) or is restarting: look again
                logger.debug("rollout desk: %s", exc)
                desk = None
            await asyncio.sleep(SYNC_S if desk is not None else LOOK_S)

    def _find_desk(self, ray: Any) -> Any:
        try:
            return ray.get_actor(desk_name(self.app_spec.name), namespace=DESK_NAMESPACE)
        except ValueError:  # no rollout runs
            return None

    def _route_by(self, desk_traffic: dict[str, dict]) -> None:
        """Route by the desk's traffic where it has some for a model, else by the spec's; reach new candidates."""
        traffic = dict(self.spec_traffic)
        for model, data in desk_traffic.items():
            if model in self.specs:
                traffic[model] = ModelTraffic.from_dict(data)
        for model, split in traffic.items():
            for route in split.candidates:
                if route.app is not None and route.deployment not in self.handles:
                    self._reach(self.specs[model], route)
        self.traffic = traffic

    def _reach(self, spec: ModelSpec, route: Route) -> None:
        """A handle (and hop) to a candidate served from an application of its own (a rollout's)."""
        assert route.app is not None
        # Unchecked: checking asks the controller and blocks the event loop; the desk names what the rollout deployed.
        handle = serve.get_deployment_handle(route.deployment, route.app, _check_exists=False)
        self.handles[route.deployment] = handle
        if self.app_spec.ingress.coalesce:
            self.hops[route.deployment] = self._model_hop(handle, spec, route.deployment, route.app)

    async def _call(
        self, spec: ModelSpec, inputs: dict, model_id: str | None, route: Route | None = None
    ) -> tuple[dict, int]:
        if route is not None:  # a candidate version: a deployment of its own, never embedded or multiplexed
            coalesced = self.hops.get(route.deployment)
            if coalesced is not None:
                return await coalesced.call(None, inputs)
            handle = self.handles[route.deployment]
            self.meters.call_requests.labels(spec.name).observe(1)
            return await once_more_if_the_replica_died(lambda: handle.infer.remote(inputs), self._retry(spec.name))
        local = self.embedded.get(spec.name)
        if local is not None:
            return await local.infer(inputs)
        if spec.name in self.standby_models and await self._has_no_replica(spec.name):
            assert self.standby is not None
            self._wake(spec.name)
            self.meters.standby_requests.labels(spec.name).inc()
            return await self.standby.call(spec.name, inputs)
        coalesced = self.hops.get(spec.name)
        if coalesced is not None:
            return await coalesced.call(model_id, inputs)
        handle = self.handles[spec.name]
        if model_id is not None:
            handle = handle.options(multiplexed_model_id=model_id)
        self.meters.call_requests.labels(spec.name).observe(1)
        return await once_more_if_the_replica_died(lambda: handle.infer.remote(inputs), self._retry(spec.name))

    async def _has_no_replica(self, name: str) -> bool:
        """Whether `name` has no running replica of its own, as Serve's controller said within the last second.
        A stale "it runs" (or nothing heard yet) is asked again before it is believed: the first request after a
        quiet spell is the one that finds the model scaled to zero."""
        running = self.states.running_replicas(name)
        if running is None or (running and self.states.stale()):
            running = (await self.states.fresh()).running.get(name)
        return running == 0

    def _wake(self, name: str) -> None:
        """A call to the model's own deployment, so Serve starts its replica as it would for any request (one at a
        time: it waits in Serve's queue until the replica runs)."""
        if name in self._waking and not self._waking[name].done():
            return

        async def wake() -> None:
            try:
                await self.handles[name].ready.remote()
            except Exception as exc:  # the standby answered meanwhile; a model that cannot start says so in status
                logger.warning("model %s: waking its replica failed: %s", name, exc)

        self._waking[name] = asyncio.get_running_loop().create_task(wake(), name=f"wake-{name}")

    def _retry(self, name: str):
        """Whether to ask again when a replica died before it answered (and count it); a second failure is the
        caller's 503 (see _infer)."""

        def retry() -> bool:
            if not self.app_spec.ingress.retry_on_replica_death:
                return False
            self.meters.retries.labels(name).inc()
            logger.warning("model %s: a replica died before answering; retrying once on another", name)
            return True

        return retry

    # ---- inference --------------------------------------------------------

    @api.post("/v1/models/{name}:predict", summary="KServe V1 predict", openapi_extra=json_body_doc(V1_BODY))
    async def predict_v1(self, name: str, request: Request) -> Response:
        spec, route = self._target(request, name)
        model_id = model_id_of(spec, family_and_id(name)[1], request)
        inputs = decode_v1(await self._json_body(request), spec)
        request_id = request_id_of(request)
        outputs = await self._infer(spec, inputs, "v1", request_id, model_id, route)
        return json_response(encode_v1(outputs, spec), request_id, route.version if route else spec.version)

    @api.post(
        "/v2/models/{name}/infer",
        summary="Open Inference Protocol V2 infer ({name} may be family:model_id)",
        openapi_extra=json_body_doc(V2_BODY),
    )
    async def infer_v2(self, name: str, request: Request) -> Response:
        return await self._infer_v2(name, *self._target(request, name), request)

    @api.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="Open Inference Protocol V2 infer (versioned)",
        openapi_extra=json_body_doc(V2_BODY),
    )
    async def infer_v2_version(self, name: str, version: str, request: Request) -> Response:
        return await self._infer_v2(name, *self._target(request, name, version), request)

    async def _infer_v2(self, name: str, spec: ModelSpec, route: Route | None, request: Request) -> Response:
        model_id = model_id_of(spec, family_and_id(name)[1], request)
        inputs, request_id, only = decode_v2(await self._json_body(request), spec)
        outputs = await self._infer(spec, inputs, "v2", request_id, model_id, route)
        payload = encode_v2(outputs, spec, request_id, only)
        if model_id is not None:
            payload["model_name"] = f"{spec.name}:{model_id}"
        if route is not None:
            payload["model_version"] = route.version
        return json_response(payload, request_id, payload["model_version"])

    # ---- Python callers ---------------------------------------------------

    async def infer(self, model: str, inputs: dict, model_id: str | None = None) -> dict:
        """For drivers holding `serve.get_app_handle(app)`: numpy arrays in, numpy arrays out.

        The same checks as HTTP (a RequestError names what is wrong), no API
        key: a caller that reaches the cluster's handles is already trusted.
        """
        name, in_name = family_and_id(model)
        spec = self.specs.get(name)
        if spec is None:
            raise RequestError(404, f"model {name!r} not found; this server has {sorted(self.specs)}")
        model_id = model_id_of(spec, model_id or in_name, None)
        traffic = self.traffic.get(name)
        route = traffic.pick(name, None) if traffic is not None else None
        return await self._infer(spec, check_inputs(inputs, spec), "handle", new_request_id(), model_id, route)

    # ---- metadata and health ----------------------------------------------

    def _visible_models(self, request: Request) -> list[str]:
        """The models a listing shows: any valid key may list, and sees the models it may invoke, nothing else."""
        key = self._authorize(request, None, any_key=True)
        return sorted(name for name in self.specs if key is None or key.allows(name))

    @api.get("/v2", summary="Server metadata")
    async def server_metadata(self, request: Request) -> dict:
        return {"name": "modelfleet", "version": api.version, "extensions": [], "models": self._visible_models(request)}

    @api.get("/v1/models", summary="KServe V1 model list: the models this key may invoke")
    async def list_models_v1(self, request: Request) -> dict:
        return {"models": self._visible_models(request)}

    @api.get("/v2/models", summary="Model list, as KServe's V2 server answers it: the models this key may invoke")
    async def list_models_v2(self, request: Request) -> dict:
        return {"models": self._visible_models(request)}

    @api.post(
        "/v2/repository/index",
        summary="Model repository index (the OIP repository extension): name, version and state of each model",
        openapi_extra=json_body_doc(INDEX_BODY, required=False),
    )
    async def repository_index(self, request: Request) -> Response:
        visible = self._visible_models(request)
        ready_only = index_wants_ready_only(await self._json_body(request, optional=True))
        states = await self._model_states()
        index = []
        for name in visible:
            state = states.get(name, "UNKNOWN")
            ready = state == "HEALTHY"  # as /v2/models/{name}/ready says
            if ready or not ready_only:
                index.append(
                    {
                        "name": name,
                        "version": self.specs[name].version,
                        "state": "READY" if ready else "UNAVAILABLE",
                        "reason": "" if ready else f"Ray Serve reports its deployment {state}",
                    }
                )
        return JSONResponse(index)

    # Liveness and readiness stay open: orchestrators' probes carry no keys.
    @api.get("/v2/health/live", summary="Server liveness")
    async def live(self) -> dict:
        return {"live": True}

    @api.get(
        "/v2/health/ready",
        summary="Server readiness: every model's deployment and the standby are healthy (no model names: probes carry "
        "no key)",
    )
    async def ready(self) -> Response:
        states = list((await self._model_states()).values())  # (asks Serve, at most once a second)
        if self.standby is not None:  # until it runs, a scaled-to-zero model's first answer waits seconds
            states.append(self.states.statuses.get("standby", "UNKNOWN"))
        ready = all(s == "HEALTHY" for s in states)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{name}", summary="Model metadata")
    @api.get("/v2/models/{name}/versions/{version}", summary="Model metadata (versioned)")
    async def model_metadata(self, name: str, request: Request, version: str | None = None) -> dict:
        spec = self._authorized_model(request, name, version)
        traffic = self.traffic.get(spec.name)
        return {
            "name": spec.name,
            "versions": traffic.versions() if traffic is not None else [spec.version],
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

    @api.get("/metrics", summary="Prometheus metrics of the app: every replica's counts, summed (docs/metrics.md)")
    async def metrics(self, request: Request) -> Response:
        self._authorize(request, None)
        try:
            await self.pusher.push()  # what this replica counted up to now is in the answer
            monitor = await self.pusher.monitor()
            return Response(await monitor.exposition.remote(self.app_spec.name), media_type=CONTENT_TYPE_LATEST)
        except Exception as exc:  # the monitor is (re)starting: a scrape that fails is better than one that lies
            logger.warning("metrics: the app's monitor did not answer: %s", exc)
            raise RequestError(
                503, "the app's metrics are being gathered; retry shortly", {"Retry-After": "1"}
            ) from None

    @api.get(
        "/status",
        summary="The app's status page: per model, versions and traffic, replicas, req/s, latency, errors, SLO, drift",
        response_class=HTMLResponse,
    )
    async def status_page(self, request: Request) -> Response:
        self._authorize(request, None)  # an admin key where keys are configured (and loopback only where not)
        try:
            await self.pusher.push()
            monitor = await self.pusher.monitor()
            state = await monitor.status.remote(self.app_spec.name)
        except Exception as exc:
            logger.warning("status: the app's monitor did not answer: %s", exc)
            raise RequestError(503, "the app's status is being gathered; retry shortly", {"Retry-After": "1"}) from None
        deploys = await asyncio.to_thread(self._last_deploys)
        return HTMLResponse(render_status(self.app_spec, self.traffic, state, deploys))

    def _last_deploys(self, count: int = 5) -> list[dict]:
        """The newest deploy records of this app in the audit log of this node (the CLI's, under `run`), from its two
        newest files: the page reloads every few seconds, and a server's log may hold a gigabyte of denied requests."""
        try:
            found = query(audit_folder(), action="deploy", newest_files=2)
        except (OSError, ValueError):  # no audit log here (yet)
            return []
        mine = [r for r in found if r.get("target", "").startswith(f"app:{self.app_spec.name}@")]
        return mine[-count:][::-1]

    async def _model_states(self) -> dict[str, str]:
        """Each model's state (and each of its spec's candidates', as NAME@VERSION), asked of Serve's controller at
        most once a second however often probes come."""
        statuses = (await self.states.fresh()).statuses
        own = "HEALTHY"  # embedded models loaded with this replica, which is answering
        states = {name: own if name in self.embedded else statuses.get(name, "UNKNOWN") for name in self.specs}
        return states | {name: statuses.get(name, "UNKNOWN") for name in self.candidate_specs}
