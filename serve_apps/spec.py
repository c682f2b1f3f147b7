"""The app spec: one YAML file describing an application's models.

These pydantic models *are* the YAML schema (`modelfleet schema` exports it for
editors). User input is strict: unknown keys are errors, units live in field
names, and cross-field checks quote the offending value. The sections a
model and an app are made of live in `_spec_sections`, exported from here;
what each format needs is its loader's record (`serve_apps.loaders.traits`).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from groundwork.specs import Strict
from monitoring.drift_spec import DriftSettings
from monitoring.payload_log_spec import PayloadLogSettings
from monitoring.slo import SloSpec
from providers.storage import resolve_uri

from ._spec_sections import (
    MODEL_ID_PLACEHOLDER,
    NAME_PATTERN,
    ArtifactSpec,
    AutoscalingSpec,
    BatchingSpec,
    CandidateSpec,
    Datatype,
    IngressSpec,
    MultiplexSpec,
    PipelineSpec,
    PipelineStep,
    ResourcesSpec,
    StandbySpec,
    TensorSpec,
    TlsSpec,
    valid_model_id,
)
from .loaders import refusal, traits
from .traffic import candidate_deployment

__all__ = [
    "AppSpec",
    "ArtifactSpec",
    "AutoscalingSpec",
    "BatchingSpec",
    "CandidateSpec",
    "Datatype",
    "IngressSpec",
    "MODEL_ID_PLACEHOLDER",
    "ModelFormat",
    "ModelSpec",
    "MultiplexSpec",
    "PipelineSpec",
    "PipelineStep",
    "ResourcesSpec",
    "SpecError",
    "StandbySpec",
    "TensorSpec",
    "TlsSpec",
    "check_artifacts_exist",
    "check_modules_resolve",
    "load_app_spec",
    "valid_model_id",
]


class ModelFormat(str, Enum):
    """How an artifact becomes a model. Each value has a record of what it needs: `serve_apps.loaders.traits`."""

    safetensors = "safetensors"
    torchscript = "torchscript"
    torch_export = "torch_export"
    sentence_transformers = "sentence_transformers"
    builtin = "builtin"
    python = "python"
    pipeline = "pipeline"


# How an error names what `module:` should hold, by FormatTraits.module.
_MODULE_HINTS = {"class": "'package.module:Class'", "builtin": "a builtin name, e.g. echo"}


class ModelSpec(Strict):
    """One model: an autoscaling Ray Serve deployment."""

    name: str = Field(
        pattern=NAME_PATTERN, description="Model name in URLs (/v2/models/{name}); lowercase, digits, - and _."
    )
    version: str = Field(default="1", pattern=r"^[A-Za-z0-9._-]+$", description="Model version, reported in V2.")
    artifact: ArtifactSpec | None = Field(
        default=None,
        description="Weights: builtin and pipeline take none, python's are optional, every other format needs them.",
    )
    format: ModelFormat = Field(description="How the artifact is loaded; one loader per format.")
    module: str | None = Field(
        default=None,
        description=(
            "For safetensors: 'package.module:Class' built with no arguments, then given the state dict. "
            "For builtin: the builtin's name (e.g. echo). "
            "For python: 'package.module:Class', called as Class(artifact_path or None, device), with predict(inputs)."
        ),
    )
    inputs: list[TensorSpec] = Field(min_length=1, description="Input tensors; requests are checked against them.")
    outputs: list[TensorSpec] = Field(min_length=1, description="Output tensors, in the order the model returns them.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Per-replica resources and node pool.")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Replica bounds and targets.")
    max_queued_requests: int = Field(
        default=-1,
        ge=-1,
        description="Requests that may wait for a replica; beyond it callers get 503 with Retry-After. -1: no limit.",
    )
    max_ongoing_requests: int = Field(
        default=16,
        ge=1,
        description=(
            "Concurrent requests one replica accepts (default 16, or twice max_batch_size when batching needs more: "
            "a full batch running and a full one waiting)."
        ),
    )
    max_surge_percent: int = Field(
        default=100,
        ge=0,
        le=100,
        description=(
            "During an update, extra replicas (percent of the target) started before old ones stop, so a deployment "
            "keeps answering while it rolls. 0 (Ray Serve's default) stops old replicas first: use it where the "
            "cluster has no room for extra replicas, e.g. a GPU pool at capacity."
        ),
    )
    batching: BatchingSpec | None = Field(default=None, description="Enable dynamic batching across requests.")
    multiplex: MultiplexSpec | None = Field(
        default=None, description="Serve a family of models from one deployment; the artifact URI holds {model_id}."
    )
    pipeline: PipelineSpec | None = Field(default=None, description="For format: pipeline, the models it calls.")
    candidates: list[CandidateSpec] = Field(
        default_factory=list,
        description=(
            "Other versions served beside this one, each a deployment of its own: canaries and A/B arms take `weight` "
            "percent of the requests, shadows get a copy of `shadow` percent (rollouts add and remove them too)."
        ),
    )
    split: Literal["random", "sticky"] = Field(
        default="random",
        description=(
            "How requests pick a candidate: at random by weight, or sticky by the request's unit (the "
            "x-modelfleet-unit header, else its API key), so a unit always meets the same version (A/B tests)."
        ),
    )
    slo: SloSpec | None = Field(
        default=None,
        description="Service level objectives: availability and latency over a window (`modelfleet slo rules|report`).",
    )
    drift: DriftSettings | None = Field(
        default=None,
        description="Compare this model's inputs with its version's reference profile, window by window, and alert.",
    )
    logging: PayloadLogSettings | None = Field(
        default=None,
        description=(
            "Log a sample of requests and responses (CloudEvents as KServe's logger names them) in batches to a "
            "storage folder; never slows a request (a full queue drops, counted)."
        ),
    )
    embedded: bool = Field(
        default=False,
        description=(
            "Run the model inside the ingress replicas instead of a deployment of its own: no handle hop per request "
            "(for models that cost less than the hop, e.g. echo, small MLPs). It scales with ingress.num_replicas, "
            "batching still applies, and its num_cpus are added to the ingress's."
        ),
    )

    @field_validator("format", mode="before")
    @classmethod
    def _refuse_pickle(cls, value: Any) -> Any:
        why = refusal(value) if isinstance(value, str) else None
        if why:
            raise ValueError(why)
        return value

    @model_validator(mode="after")
    def _drift_has_a_reference(self) -> ModelSpec:
        registered = self.artifact is not None and self.artifact.registry_ref is not None  # its own, once pinned
        if self.drift is not None and not self.drift.reference and not registered:
            raise ValueError(
                "drift needs a reference: add drift.reference, the training data (.csv, .jsonl, .npz) or a profile "
                "of it (python -m monitoring.drift DATA -o profile.json), as a path or a storage URI; or serve a "
                "models:/ reference registered with --reference-data"
            )
        return self

    @model_validator(mode="after")
    def _room_for_a_full_batch(self) -> ModelSpec:
        # One-row requests fill a batch only if the replica holds them: a full batch while the model runs one.
        if self.batching and "max_ongoing_requests" not in self.model_fields_set:
            self.max_ongoing_requests = max(self.max_ongoing_requests, 2 * self.batching.max_batch_size)
        return self

    @model_validator(mode="after")
    def _format_needs(self) -> ModelSpec:
        fmt, needs = self.format.value, traits(self.format.value)
        if needs.artifact_required and self.artifact is None:
            raise ValueError(f"format {fmt!r} needs an artifact: add artifact: {{uri: ...}}")
        if needs.needs_module and not self.module:
            raise ValueError(f"format {fmt!r} needs module: {_MODULE_HINTS[needs.module]}")
        if needs.module == "class" and not re.fullmatch(r"[\w.]+:[\w.]+", self.module or ""):
            raise ValueError(f"module {self.module!r} must look like 'package.module:Class'")
        return self

    @model_validator(mode="after")
    def _unique_tensor_names(self) -> ModelSpec:
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in tensors]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names must be unique, {dupes} repeat")
        return self

    @model_validator(mode="after")
    def _pipeline_fields(self) -> ModelSpec:
        if traits(self.format.value).calls_models != (self.pipeline is not None):
            raise ValueError("format: pipeline and a pipeline: section go together; set both or neither")
        if self.pipeline is not None:
            extra = [f for f in ("artifact", "module", "batching", "multiplex") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"a pipeline runs other models, so {extra} do not apply to it; set them on its steps")
        return self

    @model_validator(mode="after")
    def _multiplex_fields(self) -> ModelSpec:
        templated = self.artifact is not None and MODEL_ID_PLACEHOLDER in self.artifact.uri
        if self.multiplex is not None and not templated:
            raise ValueError(
                f"multiplex needs artifact.uri to contain {MODEL_ID_PLACEHOLDER}, "
                "e.g. s3://bucket/merchants/{model_id}/model.safetensors"
            )
        if templated and self.multiplex is None:
            raise ValueError(
                f"artifact.uri contains {MODEL_ID_PLACEHOLDER}: add multiplex: {{max_models_per_replica: N}}"
            )
        if templated and self.artifact is not None and self.artifact.sha256:
            raise ValueError("one sha256 cannot match every model of a multiplexed family; remove artifact.sha256")
        return self

    @model_validator(mode="after")
    def _code_is_pinned(self) -> ModelSpec:
        # A program's every ATen op, aten::from_file included, runs on load or on predict.
        program, artifact = traits(self.format.value).program, self.artifact
        if program is None or artifact is None or artifact.sha256 or artifact.allow_unpinned_code:
            return self
        if artifact.registry_ref:  # pinned to the registered sha256 before anything loads it
            return self
        why = (
            f"format {self.format.value!r} carries code ({program} can call any ATen op, "
            "e.g. aten::from_file reads any file), so whoever can replace the artifact runs code in the replica"
        )
        if self.multiplex is not None:
            raise ValueError(
                f"{why}; a multiplexed family cannot carry one sha256 to pin it, "
                "so accept that with artifact.allow_unpinned_code: true"
            )
        file = artifact.uri.rstrip("/").rsplit("/", 1)[-1] or "FILE"
        raise ValueError(
            f"{why}; pin it with artifact.sha256 (the hex from `sha256sum {file}`) "
            "or accept that with artifact.allow_unpinned_code: true"
        )

    @model_validator(mode="after")
    def _candidates_fit(self) -> ModelSpec:
        if not self.candidates:
            return self
        if self.embedded or self.multiplex is not None or self.pipeline is not None:
            kind = "an embedded model" if self.embedded else "a multiplexed family" if self.multiplex else "a pipeline"
            raise ValueError(f"candidates: {kind} serves one version; remove candidates")
        weights = sum(c.weight for c in self.candidates)
        if weights > 100:
            raise ValueError(f"candidates' weights add up to {weights:g}%; at most 100 (the rest goes to this version)")
        versions = [self.version, *(c.version for c in self.candidates if c.version is not None)]
        dupes = sorted({v for v in versions if versions.count(v) > 1})
        if dupes:
            raise ValueError(
                f"candidates: version(s) {dupes} served twice; each version once, the model's own included"
            )
        for i, candidate in enumerate(self.candidates):
            if candidate.version is None and candidate.artifact.registry_ref is None:
                raise ValueError(f"candidates[{i}] needs a version: (only a models:/ artifact brings its own)")
            self.candidate_spec(candidate, version=candidate.version or "0")  # its own checks, as a model of its own
        return self

    def candidate_spec(self, candidate: CandidateSpec, version: str | None = None) -> ModelSpec:
        """The candidate as a model of its own: this model's spec with the candidate's version, artifact and what
        else it sets, and no candidates."""
        data = self.model_dump(exclude={"candidates", "split"}, exclude_unset=False)
        data.update(
            version=version or candidate.version,
            artifact=candidate.artifact.model_dump(exclude_none=True),
            module=candidate.module or self.module,
        )
        for field in ("resources", "autoscaling"):
            if getattr(candidate, field) is not None:
                data[field] = getattr(candidate, field).model_dump(exclude_none=True)
        return ModelSpec.model_validate(data)

    @model_validator(mode="after")
    def _embedded_fields(self) -> ModelSpec:
        why = self.why_not_embeddable() if self.embedded else None
        if why:
            raise ValueError(why)
        return self

    def why_not_embeddable(self, ignore: Collection[str] = ()) -> str | None:
        """Why this model cannot run inside the ingress (`embedded: true`); None when it can.

        `ignore`: fields the caller resets when it embeds the model (the tuner resets autoscaling).
        A pipeline step cannot be embedded either, an app-wide rule that `graph.py` checks.
        """
        if not traits(self.format.value).may_embed or self.multiplex is not None:
            kind = "a multiplexed family" if self.multiplex is not None else f"a {self.format.value}"
            return f"embedded: {kind} needs a deployment of its own; remove embedded: true"
        placed = [
            f"resources.{f}"
            for f in ("pool", "num_gpus", "accelerator_type", "memory_mb")
            if getattr(self.resources, f)
        ]
        # Compared with the defaults, not model_fields_set: a spec must survive a model_dump/validate round trip.
        defaults = {"autoscaling": AutoscalingSpec(), "max_queued_requests": -1}
        scaled = [f for f, default in defaults.items() if getattr(self, f) != default]
        fields = [f for f in placed + scaled if f not in ignore]
        if fields:
            return (
                f"embedded: the model runs inside the ingress, which sets where it runs and how it scales; "
                f"remove {fields} or embedded: true"
            )
        return None

    def artifact_uri(self, model_id: str | None = None) -> str:
        """The artifact URI, with a multiplexed family's `{model_id}` filled in (ask only models with an artifact)."""
        if self.artifact is None:
            raise ValueError(f"model {self.name!r} has no artifact")
        if self.multiplex is None:
            return self.artifact.uri
        if model_id is None or not valid_model_id(model_id):
            raise ValueError(f"model {self.name!r} needs a valid model id, got {model_id!r}")
        return self.artifact.uri.replace(MODEL_ID_PLACEHOLDER, model_id)


RESERVED_DEPLOYMENTS = ("ingress", "standby")  # modelfleet's own deployments in every app (build.py)


class AppSpec(Strict):
    """An application: models served together behind one HTTP ingress."""

    name: str = Field(pattern=NAME_PATTERN, description="Application name (the Ray Serve application).")
    route_prefix: str = Field(default="/", pattern=r"^/", description="HTTP route prefix of the application.")
    models: list[ModelSpec] = Field(min_length=1, description="The models this application serves.")
    ingress: IngressSpec = Field(default_factory=IngressSpec, description="HTTP ingress settings.")
    standby: StandbySpec | None = Field(
        default=None,
        description=(
            "Warm replicas with the runtime imported and the artifacts fetched, which answer a model with "
            "min_replicas: 0 while it has no replica of its own (and wake it): a first answer in milliseconds, not "
            "seconds. CPU models only; each holds at most max_models, each for idle_s after its last request."
        ),
    )

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _unique_models(self) -> AppSpec:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, {dupes} repeat; rename all but one")
        taken = sorted(set(names) & set(RESERVED_DEPLOYMENTS))
        if taken:
            raise ValueError(f"model name {taken[0]!r} is the name of modelfleet's own deployment; rename the model")
        return self

    @model_validator(mode="after")
    def _pipelines_wire_up(self) -> AppSpec:
        from .graph import check_pipelines  # the wiring rules live with the code that runs them

        check_pipelines(self.models)
        return self

    @property
    def base_dir(self) -> Path:
        """The folder plain artifact paths are relative to (the spec file's own folder)."""
        return self._base_dir

    def cpus_at_start(self) -> dict[str, float]:
        """CPUs each deployment reserves once deployed (its first replicas; embedded models count in the ingress)."""
        ingress = self.ingress.num_cpus + sum(m.resources.num_cpus for m in self.models if m.embedded)
        needs = {"ingress": self.ingress.num_replicas * ingress}
        for m in self.models:
            if not m.embedded:
                scaling = m.autoscaling
                first = scaling.initial_replicas if scaling.initial_replicas is not None else scaling.min_replicas
                needs[m.name] = first * m.resources.num_cpus
        for m in self.candidate_specs():
            scaling = m.autoscaling
            first = scaling.initial_replicas if scaling.initial_replicas is not None else scaling.min_replicas
            needs[candidate_deployment(m.name, m.version)] = first * m.resources.num_cpus
        if self.standby is not None and self.standby_models():
            needs["standby"] = self.standby.num_replicas * self.standby.num_cpus
        return {name: cpus for name, cpus in needs.items() if cpus}

    def standby_models(self) -> list[ModelSpec]:
        """The models a standby replica answers for: scaled to zero, in a deployment of their own, one model (not a
        family or a pipeline), on CPU. None without `standby:`."""
        if self.standby is None:
            return []
        return [
            m
            for m in self.models
            if m.autoscaling.min_replicas == 0
            and not m.embedded
            and m.pipeline is None
            and m.multiplex is None
            and not m.resources.num_gpus
            and not m.candidates  # a standby answers for one version
        ]

    def artifacts(self) -> list[tuple[str, ModelSpec, ArtifactSpec, CandidateSpec | None]]:
        """Every artifact the app names, with where (`models[i:name].artifact`, or `...candidates[j].artifact`), its
        model and, for a candidate's, the candidate."""
        found: list[tuple[str, ModelSpec, ArtifactSpec, CandidateSpec | None]] = []
        for i, model in enumerate(self.models):
            if model.artifact is not None:
                found.append((f"models[{i}:{model.name}].artifact", model, model.artifact, None))
            for j, candidate in enumerate(model.candidates):
                found.append(
                    (f"models[{i}:{model.name}].candidates[{j}].artifact", model, candidate.artifact, candidate)
                )
        return found

    def registry_refs(self) -> list[tuple[str, ModelSpec, ArtifactSpec, CandidateSpec | None]]:
        """`artifacts()` that are `models:/` references not pinned yet."""
        return [found for found in self.artifacts() if found[2].registry_ref]

    def candidate_specs(self) -> list[ModelSpec]:
        """Each candidate version of each model, as a model of its own (`ModelSpec.candidate_spec`)."""
        return [m.candidate_spec(c) for m in self.models for c in m.candidates]

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def slo_bounds_s(self) -> list[float]:
        """The latency bounds of the models' SLOs, in seconds: the ingress's latency histogram has a bucket at each."""
        return sorted({bound for m in self.models if m.slo for _, bound in m.slo.latency_targets().values()})

    def keys_path(self) -> Path | None:
        return (self._base_dir / self.ingress.keys_file).resolve() if self.ingress.keys_file else None

    def _local_path(self, path: str) -> str:
        return str((self._base_dir / path).resolve())

    def resolved(self) -> AppSpec:
        """A copy whose paths are absolute, so it means the same from any working directory."""
        copy = self.model_copy(deep=True)
        if copy.ingress.keys_file:
            copy.ingress.keys_file = str(self.keys_path())
        tls = copy.ingress.tls
        if tls is not None:
            tls.cert_file, tls.key_file = self._local_path(tls.cert_file), self._local_path(tls.key_file)
            if tls.client_ca_file:
                tls.client_ca_file = self._local_path(tls.client_ca_file)
        for _, model, artifact, _ in copy.artifacts():
            if artifact.registry_ref:
                raise ValueError(
                    f"model {model.name!r}: {artifact.registry_ref} is not pinned yet; modelfleet's validate, "
                    "build, deploy and run resolve registry references"
                )
            artifact.uri = resolve_uri(artifact.uri, self._base_dir)
        for model in copy.models:
            if model.drift is not None and model.drift.reference:
                model.drift.reference = resolve_uri(model.drift.reference, self._base_dir)
            if model.logging is not None:
                model.logging.destination = resolve_uri(model.logging.destination, self._base_dir)
        copy._base_dir = self._base_dir
        return copy


# Reading files lives in its own module; these names stay importable from here.
from ._spec_file import SpecError, check_artifacts_exist, check_modules_resolve, load_app_spec  # noqa: E402
