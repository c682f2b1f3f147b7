"""The sections a model and an app spec are made of: tensors, artifact, resources, autoscaling, batching,
multiplexing, pipeline steps, and the ingress with its TLS.

Import them from `serve_apps.spec`, which holds the model and app specs and exports these names too.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from groundwork.specs import Strict
from providers.storage import UnsupportedScheme, scheme_of

__all__ = [
    "MODEL_ID_PLACEHOLDER",
    "NAME_PATTERN",
    "ArtifactSpec",
    "AutoscalingPolicySpec",
    "AutoscalingSpec",
    "BatchingSpec",
    "Datatype",
    "IngressSpec",
    "MultiplexSpec",
    "PipelineSpec",
    "PipelineStep",
    "ResourcesSpec",
    "TensorSpec",
    "TlsSpec",
    "valid_model_id",
]

NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
MODEL_ID_PLACEHOLDER = "{model_id}"
# A model version in the registry: models:/NAME/VERSION or models:/NAME@ALIAS (registry.store.parse_ref reads them).
REGISTRY_REF = re.compile(r"models:/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(/[1-9][0-9]{0,8}|@[A-Za-z][A-Za-z0-9_-]{0,127})")


def valid_model_id(model_id: str) -> bool:
    """A multiplexed model id goes into a URL and into an artifact URI: no '/', no '..', no braces."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", model_id)) and ".." not in model_id


class Datatype(str, Enum):
    """Open Inference Protocol V2 tensor datatypes that modelfleet accepts over JSON."""

    BOOL = "BOOL"
    INT32 = "INT32"
    INT64 = "INT64"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class TensorSpec(Strict):
    """One named input or output tensor, as in the Open Inference Protocol."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", description="Tensor name, as sent in V2 `inputs[].name`.")
    datatype: Datatype = Field(description="OIP V2 datatype: BOOL, INT32, INT64, FP32, FP64 or BYTES (strings).")
    shape: list[int] = Field(
        min_length=1, description="Shape; -1 marks a free dimension. The first dimension is the batch dimension."
    )

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        bad = [d for d in shape if d == 0 or d < -1]
        if bad:
            raise ValueError(f"dimensions must be positive or -1 (free), got {shape}")
        return shape


class ArtifactSpec(Strict):
    """Where a model's weights come from."""

    uri: str = Field(
        description=(
            "file://, s3://, gs://, az://, https:// or a plain path relative to the spec's folder. "
            "A trailing '/' (or a local folder) means a directory artifact."
        )
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 (hex). Verified before the artifact enters the cache.",
    )
    allow_unpinned_code: bool = Field(
        default=False,
        description=(
            "Load a torchscript or torch_export artifact without a sha256. Those formats are programs that can call "
            "any ATen op (aten::from_file reads any file), so whoever can replace the artifact runs code in the "
            "replica; a multiplexed family, which cannot carry one sha256, needs this."
        ),
    )

    registered_as: str | None = Field(
        default=None,
        pattern=REGISTRY_REF.pattern,
        description=(
            "Set by modelfleet when it pins a models:/ reference (validate, build, deploy, run): the reference the "
            "uri and sha256 were resolved from, kept for the record."
        ),
    )

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        if uri.startswith("models:"):
            if not REGISTRY_REF.fullmatch(uri):
                raise ValueError(
                    f"{uri!r}: a registry reference is models:/NAME/VERSION or models:/NAME@ALIAS "
                    "(see `modelfleet models list`)"
                )
            return uri
        try:
            scheme_of(uri)
        except UnsupportedScheme as exc:
            raise ValueError(str(exc)) from None
        return uri

    @property
    def registry_ref(self) -> str | None:
        """The `models:/` reference this artifact still names (None: a storage URI, or a reference pinned already)."""
        return self.uri if self.uri.startswith("models:") else None


class ResourcesSpec(Strict):
    """What one replica needs, and which node pool it runs on."""

    pool: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Node pool (from the cluster spec) to place replicas on: the Ray custom resource `pool:<name>`.",
    )
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(
        default=0.0,
        ge=0,
        description="GPUs per replica (fractional allowed). Without a GPU, the model runs on CPU with a warning.",
    )
    accelerator_type: str | None = Field(
        default=None,
        description="Ray accelerator type the replica needs, e.g. T4, A10G, L4, A100, H100 (with num_gpus > 0).",
    )
    memory_mb: int | None = Field(default=None, gt=0, description="Memory reserved per replica, in MiB.")

    @model_validator(mode="after")
    def _accelerator_needs_a_gpu(self) -> ResourcesSpec:
        if self.accelerator_type and not self.num_gpus:
            raise ValueError(f"accelerator_type {self.accelerator_type!r} needs num_gpus > 0")
        return self


class AutoscalingPolicySpec(Strict):
    """Ray Serve's custom autoscaling policy: a function (or class) by import path, and its keyword arguments."""

    policy_function: str = Field(
        pattern=r"^[\w.]+:[\w.]+$", description="Import path of the policy, module.path:function_name."
    )
    policy_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for a policy class.")


class AutoscalingSpec(Strict):
    """Ray Serve's autoscaling config, field for field (see ray.serve.config.AutoscalingConfig).

    Four defaults differ from Ray Serve's, chosen by bench/autoscale.py (a step from 2 to 32 callers and back,
    BENCHMARKS.md): scale up after 1 s of high load (Ray: 30 s), down after 30 s of low load (Ray: 600 s), load
    reported every 0.5 s (Ray: 10 s) and averaged over 5 s (Ray: 30 s). With Ray's, p95 came back within the SLO
    24 s after the step and the extra replicas were still held 70 s after the load dropped; with these, 7 s and 36
    s, and no failed request either way.
    """

    min_replicas: int = Field(default=1, ge=0, description="Lower bound; 0 allows scale to zero.")
    max_replicas: int = Field(default=1, ge=1, description="Upper bound on replicas.")
    initial_replicas: int | None = Field(default=None, ge=0, description="Replicas at deploy time.")
    target_ongoing_requests: float = Field(default=2.0, gt=0, description="Per-replica load the autoscaler aims for.")
    upscale_delay_s: float = Field(
        default=1.0, ge=0, description="How long load must stay high before scaling up (Ray Serve's default: 30)."
    )
    downscale_delay_s: float = Field(
        default=30.0, ge=0, description="How long load must stay low before scaling down (Ray Serve's default: 600)."
    )
    downscale_to_zero_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="How long load must stay at zero before the last replica goes (default: downscale_delay_s).",
    )
    metrics_interval_s: float | None = Field(
        default=0.5,
        gt=0,
        description=(
            "How often replicas report load (Ray Serve's default: 10). Ray 2.60 still honours it and warns that it "
            "will move to RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S environment variables."
        ),
    )
    look_back_period_s: float | None = Field(
        default=5.0, gt=0, description="Window the load is averaged over (Ray Serve's default: 30)."
    )
    aggregation_function: Literal["mean", "max", "min"] | None = Field(
        default=None, description="How the load in the look-back window is summarised (Ray's default: mean)."
    )
    smoothing_factor: float | None = Field(
        default=None, gt=0, description="Multiplies every scaling decision (>1 scales faster, <1 slower)."
    )
    upscale_smoothing_factor: float | None = Field(default=None, gt=0, description="smoothing_factor for upscaling.")
    downscale_smoothing_factor: float | None = Field(
        default=None, gt=0, description="smoothing_factor for downscaling."
    )
    upscaling_factor: float | None = Field(default=None, gt=0, description="Ray's newer name for the upscale factor.")
    downscaling_factor: float | None = Field(
        default=None, gt=0, description="Ray's newer name for the downscale factor."
    )
    policy: AutoscalingPolicySpec | None = Field(
        default=None, description="A custom autoscaling policy (code: the spec's author is trusted, see SECURITY.md)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas}); "
                "raise max_replicas or lower min_replicas"
            )
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie between min_replicas ({self.min_replicas}) "
                f"and max_replicas ({self.max_replicas})"
            )
        return self


class BatchingSpec(Strict):
    """Dynamic batching across requests: the next batch forms when the model is free, from every request waiting
    (serve_apps/batching.py), so batches grow with the load."""

    max_batch_size: int = Field(default=16, ge=1, description="Largest batch (in rows) handed to the model.")
    batch_wait_timeout_s: float = Field(
        default=0.005,
        ge=0,
        description=(
            "How long the oldest waiting request may wait for others to fill a batch (Triton's max_queue_delay); "
            "a request that already waited that long for a busy model goes with the next batch at once."
        ),
    )


class MultiplexSpec(Strict):
    """A family of same-architecture models in one deployment (Ray Serve model multiplexing).

    Each request names a model id; a replica loads that id's artifact (the
    artifact URI with `{model_id}` filled in) on first use and keeps up to
    `max_models_per_replica` loaded, unloading one by `eviction` beyond that.
    """

    max_models_per_replica: int = Field(
        default=3, ge=1, description="Models one replica keeps loaded; beyond it one is unloaded (see eviction)."
    )
    eviction: Literal["frequency", "lru"] = Field(
        default="frequency",
        description=(
            "Which loaded model makes room: `frequency` unloads the one asked for least lately (the least recent "
            "among equals: with even traffic it is LRU), which keeps popular models loaded under skewed traffic; "
            "`lru` is Ray Serve's own least recently used (serve_apps/eviction.py)."
        ),
    )
    example_id: str | None = Field(
        default=None,
        description=(
            "An id whose artifact exists: used for the deploy preflight check and the printed example requests."
        ),
    )

    @field_validator("example_id")
    @classmethod
    def _valid_id(cls, model_id: str | None) -> str | None:
        if model_id is not None and not valid_model_id(model_id):
            raise ValueError(f"{model_id!r} is not a model id: letters, digits, '_', '-' and '.', no '..', at most 128")
        return model_id


class PipelineStep(Strict):
    """One call of a pipeline: a model of the same app, and where each of its inputs comes from."""

    model: str = Field(pattern=NAME_PATTERN, description="The model (of this app) to call.")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Step input -> source: a request input's name, or '<step>.<output>' of an earlier step. "
            "An input left out takes the request input of its name, else the one earlier step output of its name."
        ),
    )


class PipelineSpec(Strict):
    """A model that calls other models over Ray Serve handles; steps that do not depend on each other run
    concurrently."""

    steps: list[PipelineStep] = Field(min_length=1, description="Calls, each after the steps it takes inputs from.")
    outputs: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Pipeline output -> source ('<step>.<output>' or a request input); left out: found by name as for inputs."
        ),
    )


class CandidateSpec(Strict):
    """Another version of the model, served beside it by a deployment of its own: a canary (`weight`), an A/B arm
    (`weight` with `split: sticky`) or a shadow (`shadow`). Everything not set here is the model's own."""

    version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Its version (a models:/ artifact's is the registry's number); not the model's own.",
    )
    artifact: ArtifactSpec = Field(description="Its weights (models:/NAME/VERSION, or any storage URI).")
    module: str | None = Field(default=None, description="Its class, where it is not the model's own module.")
    weight: float = Field(default=0, ge=0, le=100, description="Percent of the model's requests it answers.")
    shadow: float = Field(
        default=0,
        ge=0,
        le=100,
        description="Percent of the model's requests copied to it; callers get the model's answer.",
    )
    resources: ResourcesSpec | None = Field(default=None, description="Its replicas' resources (default: the model's).")
    autoscaling: AutoscalingSpec | None = Field(default=None, description="Its replica bounds (default: the model's).")


class TlsSpec(Strict):
    """HTTPS for the app's port: keys then never cross the network in cleartext."""

    cert_file: str = Field(description="PEM certificate chain (relative to the spec).")
    key_file: str = Field(description="PEM private key (relative to the spec); keep it mode 0600.")
    client_ca_file: str | None = Field(
        default=None, description="PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."
    )


class StandbySpec(Strict):
    """Warm replicas that answer for a scaled-to-zero model while its own replica starts (serve_apps/standby.py)."""

    num_replicas: int = Field(default=1, ge=1, description="Standby replicas (each can answer for any of the models).")
    num_cpus: float = Field(default=0.25, ge=0, description="CPUs reserved for each standby replica.")
    max_models: int = Field(
        default=4, ge=1, description="Models one standby replica holds at once; the least recently used goes first."
    )
    idle_s: float = Field(
        default=30.0,
        gt=0,
        description="A model a standby replica has not used for this long is dropped, and its memory goes back.",
    )


class IngressSpec(Strict):
    """The HTTP front door shared by all models of the app."""

    max_body_mb: float = Field(default=16.0, gt=0, description="Larger request bodies get 413.")
    num_cpus: float = Field(default=0.5, ge=0, description="CPUs reserved for each ingress replica.")
    num_replicas: int = Field(default=1, ge=1, description="Ingress replicas.")
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="A model that has not answered by then gets the caller a 503 (never a hang)."
    )
    keys_file: str | None = Field(
        default=None,
        description=(
            "API keys file (hashes and scopes; relative to the spec), merged with MODELFLEET_API_KEYS. "
            "With any key configured, every model route needs `Authorization: Bearer <key>`."
        ),
    )
    tls: TlsSpec | None = Field(default=None, description="Serve HTTPS (and optionally mutual TLS) instead of HTTP.")
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A request's line and headers must arrive within this; slower or silent clients are cut off.",
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="A request's body must arrive within this once its headers have."
    )
    max_connections: int = Field(
        default=1024, ge=1, description="Open connections per ingress replica; beyond it new ones are closed at once."
    )
    coalesce: bool = Field(
        default=True,
        description=(
            "Send the requests for one model that wait at the same moment in one handle call (each caller still gets "
            "its own answer or error): under load, far fewer calls to pay for. Off: one call per request."
        ),
    )
    local_hop: bool = Field(
        default=True,
        description=(
            "Call a model whose running replicas are all on the caller's Ray node (the ingress's, or a pipeline's) "
            "over a Unix socket to them instead of a Ray Serve handle: Serve still places, scales, health-checks "
            "and stops them, and a call costs a fraction of a handle call. Multiplexed families always use the "
            "handle. Off: always the handle."
        ),
    )
    retry_on_replica_death: bool = Field(
        default=True,
        description=(
            "Retry, once and on another replica, an inference call whose replica died before answering. Safe because "
            "inference is a pure function of the request; turn it off for a format: python model with side effects."
        ),
    )
