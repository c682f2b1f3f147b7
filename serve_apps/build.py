"""AppSpec -> a Ray Serve application, and -> a `serve deploy` config.

Everything Ray Serve already does (autoscaling, batching, handles) is
configured here from the spec rather than re-implemented.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve import Application, Deployment

from providers.compute import POOL_DEMAND, pool_resource
from providers.storage import parse_uri, scheme_of

from .auth import KeyRing
from .autoscaling_policy import POLICY as REQUESTS_POLICY
from .deployment import ModelDeployment
from .ingress import Ingress
from .loaders import traits
from .pipeline import PipelineDeployment
from .spec import AppSpec, ModelSpec
from .standby import StandbyDeployment
from .traffic import candidate_deployment

__all__ = [
    "LocalNeed",
    "app_builder",
    "build_app",
    "code_packages",
    "deployment_options",
    "local_needs",
    "serve_config",
]

logger = logging.getLogger("modelfleet")

INGRESS_NAME = "ingress"
STANDBY_NAME = "standby"

# The ingress only routes (async, no model code): it can hold many requests at once.
INGRESS_MAX_ONGOING_REQUESTS = 512
# How long a stopping replica waits before it first looks for requests still running (then again each as long, up to
# Serve's 20 s grace). Serve's 2 s is for callers to hear the replica is going: here they hear within milliseconds
# (handles by the controller's long poll, the local hop by the replica's goodbye, the ingress's own listener drains
# its connections after), so each rolling update, scale-down and app deletion would wait 1.5 s longer per replica.
GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 0.5


def deployment_options(
    model: ModelSpec, gpus_in_cluster: float | None = None, name: str | None = None
) -> dict[str, Any]:
    """Ray Serve deployment options for one model (`name`: its deployment's, when not the model's: a candidate's).

    `gpus_in_cluster`: when known (a local run) and smaller than what the model
    asks for, the model runs on CPU with a warning instead of never scheduling.
    """
    auto = model.autoscaling.model_dump(exclude_none=True)
    # Serve's default rule, on requests rather than handle calls: a coalesced call carries many (coalescing.py).
    auto.setdefault("policy", {"policy_function": REQUESTS_POLICY})
    actor: dict[str, Any] = {"num_cpus": model.resources.num_cpus}
    num_gpus = model.resources.num_gpus
    if num_gpus and gpus_in_cluster is not None and gpus_in_cluster < num_gpus:
        logger.warning(
            "model %s asks for %s GPU(s) but this cluster has %s: it runs on CPU", model.name, num_gpus, gpus_in_cluster
        )
        num_gpus = 0
    if num_gpus:
        actor["num_gpus"] = num_gpus
        if model.resources.accelerator_type:
            actor["accelerator_type"] = model.resources.accelerator_type
    if model.resources.pool:
        actor["resources"] = {pool_resource(model.resources.pool): POOL_DEMAND}
    if model.resources.memory_mb:
        actor["memory"] = model.resources.memory_mb * 1024 * 1024
    return {
        "name": name or model.name,
        "autoscaling_config": auto,
        "max_ongoing_requests": model.max_ongoing_requests,
        "max_queued_requests": model.max_queued_requests,
        "max_surge_percent": model.max_surge_percent,
        "graceful_shutdown_wait_loop_s": GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
        "ray_actor_options": actor,
    }


def _deployment(cls: type) -> Deployment:
    """`serve.deployment(cls)`: Ray's type hints cover only its decorator forms, not this plain call."""
    return serve.deployment(cls)  # type: ignore[return-value]


def build_app(
    spec: AppSpec,
    gpus_in_cluster: float | None = None,
    keys: KeyRing | None = None,
    listen: tuple[str, int] | None = None,
) -> Application:
    """The Serve application: one deployment per model (embedded ones aside) behind one ingress.

    `keys`: defaults to the spec's keys file plus MODELFLEET_API_KEYS, read
    here; only their hashes travel to the ingress.
    `listen`: (host, port) the ingress replicas serve HTTP on themselves
    (see listener.py); None leaves HTTP to Ray's proxy alone.
    """
    keys = keys or KeyRing.load(spec.keys_path())
    spec = spec.resolved()
    models: dict[str, Application] = {}

    def bind(model: ModelSpec) -> Application:
        """A model's deployment; a pipeline's gets handles to its steps (bound first: the spec has no cycles)."""
        if model.name not in models:
            options = deployment_options(model, gpus_in_cluster)
            if model.pipeline is None:
                models[model.name] = (
                    _deployment(ModelDeployment)
                    .options(**options)
                    .bind(model.model_dump(mode="json"), spec.ingress.local_hop)
                )
            else:
                steps = [spec.model(s.model) for s in model.pipeline.steps]
                models[model.name] = (
                    _deployment(PipelineDeployment)
                    .options(**options)
                    .bind(
                        model.model_dump(mode="json"),
                        {step.name: bind(step) for step in steps},
                        {step.name: step.model_dump(mode="json") for step in steps},
                        spec.ingress.local_hop,
                    )
                )
        return models[model.name]

    for model in spec.models:
        if not model.embedded:
            bind(model)
    for candidate in spec.candidate_specs():
        name = candidate_deployment(candidate.name, candidate.version)
        models[name] = (
            _deployment(ModelDeployment)
            .options(**deployment_options(candidate, gpus_in_cluster, name))
            .bind(candidate.model_dump(mode="json"), spec.ingress.local_hop)
        )
    ingress = _deployment(Ingress).options(
        name=INGRESS_NAME,
        num_replicas=spec.ingress.num_replicas,
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
        # New ingress replicas start before old ones stop: under `modelfleet run` they hold the app's port,
        # and stopping first would leave it refusing connections while the new ones start (bench.faults).
        max_surge_percent=100,
        graceful_shutdown_wait_loop_s=GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
        ray_actor_options={
            "num_cpus": spec.ingress.num_cpus + sum(m.resources.num_cpus for m in spec.models if m.embedded)
        },
    )
    address = {"host": listen[0], "port": listen[1]} if listen else None
    return ingress.bind(spec.model_dump(mode="json"), models, keys.hashes(), address, _standby(spec))


def _standby(spec: AppSpec) -> Application | None:
    """The app's standby replicas (standby.py), when it asks for them and has a model they can answer for."""
    adopted = spec.standby_models()
    if spec.standby is None or not adopted:
        return None
    return (
        _deployment(StandbyDeployment)
        .options(
            name=STANDBY_NAME,
            num_replicas=spec.standby.num_replicas,
            max_ongoing_requests=max(m.max_ongoing_requests for m in adopted) * spec.standby.max_models,
            graceful_shutdown_wait_loop_s=GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
            ray_actor_options={"num_cpus": spec.standby.num_cpus},
        )
        .bind({m.name: m.model_dump(mode="json") for m in adopted}, spec.standby.model_dump(mode="json"))
    )


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for `serve deploy` configs: `import_path: serve_apps.build:app_builder`."""
    return build_app(AppSpec.model_validate(args["spec"]), keys=KeyRing.from_hashes(args.get("keys")))


def serve_config(
    spec: AppSpec,
    host: str = "127.0.0.1",
    port: int = 8000,
    keys: KeyRing | None = None,
    tls_files_in: str | None = None,
) -> dict[str, Any]:
    """A ServeDeploySchema-compatible config that rebuilds this app from its (resolved) spec.

    API keys are embedded as hashes, so the config is safe to store and ship.
    `tls_files_in`: where the nodes find an HTTPS app's certificate and key, as `tls.crt` and `tls.key`
    (KubeRay mounts them from a Secret there), rather than at the spec's paths on this machine.
    """
    keys = keys or KeyRing.load(spec.keys_path())
    resolved = spec.resolved()
    if resolved.ingress.tls is not None and tls_files_in is not None:
        moved = {"cert_file": f"{tls_files_in}/tls.crt", "key_file": f"{tls_files_in}/tls.key"}
        resolved.ingress.tls = resolved.ingress.tls.model_copy(update=moved)
    http_options: dict[str, Any] = {"host": host, "port": port}
    tls = resolved.ingress.tls
    if tls is not None:
        if tls.client_ca_file:
            raise ValueError(
                "ingress.tls.client_ca_file: Ray Serve's proxy, which serves a `serve deploy` config, cannot ask "
                "clients "
                "for certificates; use `modelfleet run` (its ingress serves mutual TLS itself) or terminate mTLS in "
                "front"
            )
        http_options |= {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}  # Serve's proxies serve HTTPS
    return {
        "proxy_location": "EveryNode",
        "http_options": http_options,
        "applications": [
            {
                "name": resolved.name,
                "route_prefix": resolved.route_prefix,
                "import_path": "serve_apps.build:app_builder",
                "args": {"spec": resolved.model_dump(mode="json"), "keys": keys.hashes()},
            }
        ],
    }


def code_packages(spec: AppSpec) -> list[str]:
    """The top-level packages a replica of `spec` imports: this project's, then the models' own (`module:`)."""
    from groundwork.packages import REPLICA_PACKAGES

    models = [
        m.module.partition(":")[0].split(".")[0]
        for m in spec.models
        if m.module and traits(m.format.value).module == "class"
    ]
    return list(dict.fromkeys([*REPLICA_PACKAGES, *models]))


@dataclass(frozen=True)
class LocalNeed:
    """A file or module of this machine that a `serve_config` names, and which nodes need it."""

    what: str  # an absolute path, or a module to import
    field: str  # where the app spec sets it
    nodes: str  # which nodes need it


def local_needs(config: dict[str, Any]) -> list[LocalNeed]:
    """What a `serve_config` takes from this machine: file artifacts, TLS files and the models' own modules.

    The config carries no runtime_env, and Ray copies none of these: each node that runs a replica
    (or, for TLS files, a Serve proxy: `proxy_location: EveryNode`) reads them at the same path or imports them.
    """
    needs = []
    for application in config["applications"]:
        spec = AppSpec.model_validate(application["args"]["spec"])
        for i, model in enumerate(spec.models):
            if model.embedded:
                nodes = "nodes that may run the ingress"
            elif model.resources.pool:
                nodes = f"every node of pool {model.resources.pool}"
            else:
                nodes = "nodes that may run its replicas"
            where = f"models[{i}:{model.name}]"
            for j, candidate in enumerate(model.candidates):
                if scheme_of(candidate.artifact.uri) == "file":
                    field = f"{where}.candidates[{j}].artifact.uri"
                    needs.append(LocalNeed(parse_uri(candidate.artifact.uri).key, field, nodes))
            if model.artifact is not None and scheme_of(model.artifact.uri) == "file":
                needs.append(LocalNeed(parse_uri(model.artifact.uri).key, f"{where}.artifact.uri", nodes))
            if model.module and traits(model.format.value).module == "class":
                needs.append(LocalNeed(model.module.partition(":")[0], f"{where}.module", nodes))
    http = config.get("http_options", {})
    for option, field in (("ssl_certfile", "cert_file"), ("ssl_keyfile", "key_file")):
        if option in http:
            needs.append(LocalNeed(http[option], f"ingress.tls.{field}", "every node (Serve's proxies)"))
    return needs
