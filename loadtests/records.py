"""What a load run and a tuning sweep measured: typed records, and nothing else.

Measurement code fills these; reports and the CLI only read them (Triton
Model Analyzer's split). They are pydantic models so that `summary.json` and
the tuner's trials round-trip through JSON unchanged. Latencies are in
milliseconds, computed from every request's own response time (not Locust's
rounded buckets); times (`t_s`) are seconds since the run started.

Throughput (`rps`) and latency percentiles count successful requests only: a
refused connection fails in microseconds, and counted in would inflate req/s and
shrink the percentiles. Failures are counted apart, by kind (`failures_by_kind`:
"connection refused", "timeout", "HTTP 503", ...). `requests` still counts every
request sent, failed ones included (`successes` is the difference). Records
written before `failures_by_kind` existed counted failed requests in `rps` and
the percentiles too.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field, computed_field


class Protocol(str, Enum):
    """The inference protocol the load's requests speak."""

    v2 = "v2"  # Open Inference Protocol: POST /v2/models/NAME/infer
    v1 = "v1"  # KServe V1: POST /v1/models/NAME:predict


__all__ = [
    "EndpointResult",
    "ModelKnobs",
    "ReplicaPoint",
    "ResourcePoint",
    "RunConfig",
    "RunRecord",
    "StageResult",
    "TimePoint",
    "Trial",
    "TuneRecord",
]


class Latencies(BaseModel):
    """Request counts, throughput and latency percentiles over some window."""

    requests: int = Field(default=0, description="Requests sent, failed ones included.")
    failures: int = 0
    failures_by_kind: dict[str, int] = Field(
        default_factory=dict, description='Failure kind ("connection refused", "HTTP 503", ...) -> count.'
    )
    rps: float = Field(default=0.0, description="Successful requests per second of the window.")
    # The percentiles and the mean are of successful requests' latencies; None when none succeeded.
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    max_ms: float | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def successes(self) -> int:
        """Requests answered as expected: what `rps` and the percentiles count."""
        return self.requests - self.failures


class TimePoint(BaseModel):
    """One whole second of the run (the last, partial second is left out: it would plot a drop that never was)."""

    t_s: float
    users: int
    rps: float = Field(description="Successful requests that ended in this second.")
    failures_per_s: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


class StageResult(Latencies):
    """A stretch of the run at one user count (a step of a step shape; the whole run for constant load).

    `requests` and `failures` count every request that ended in the stage (the first stage's from the run's start,
    the last one's until the last answer), so the stages add up to the run. `rps` and the percentiles are its steady
    state: successful requests from `settled_s` (after the users started or stopped) to `end_s`.
    """

    users: int
    start_s: float
    end_s: float
    settled_s: float | None = Field(default=None, description="Start of the window of `rps` and the percentiles.")


class EndpointResult(Latencies):
    """One model's share of the run, by what the generator saw and, where available, what the server counted."""

    name: str
    server_requests: int | None = Field(default=None, description="Requests the ingress counted (its /metrics).")
    mean_batch_rows: float | None = Field(default=None, description="Mean rows per model batch (dynamic batching).")


class ReplicaPoint(BaseModel):
    t_s: float
    replicas: dict[str, int] = Field(description="Deployment -> RUNNING replicas, as Serve reported them.")


class ResourcePoint(BaseModel):
    t_s: float
    server_cpu_cores: float | None = None
    server_memory_mb: float | None = None
    generator_cpu_cores: float


class RunConfig(BaseModel):
    """What was asked for."""

    url: str
    app: str | None = Field(default=None, description="The app spec's name, when the run started the app itself.")
    shape: str
    users: int
    spawn_rate: float
    duration_s: float
    workers: int = 0
    protocol: str
    rows_per_request: int
    endpoints: dict[str, float] = Field(default_factory=dict, description="Endpoint -> weight.")
    started_at: str = ""


class RunRecord(Latencies):
    """One load run. The top-level fields are `summary.json`'s contract: rps, p50_ms, p95_ms, p99_ms, requests,
    failures."""

    config: RunConfig
    duration_s: float = Field(description="Measured: from the first request sent to the last answer received.")
    errors: dict[str, int] = Field(default_factory=dict, description="Failure message -> count.")
    endpoints: list[EndpointResult] = Field(default_factory=list)
    stages: list[StageResult] = Field(default_factory=list)
    timeline: list[TimePoint] = Field(default_factory=list)
    replicas: list[ReplicaPoint] = Field(default_factory=list)
    resources: list[ResourcePoint] = Field(default_factory=list)
    generator_cpu_cores: float = Field(default=0.0, description="Mean cores the load generator itself used.")
    server_cpu_cores: float | None = Field(
        default=None, description="Mean cores of the server's processes (when it ran here)."
    )
    server_memory_mb: float | None = Field(default=None, description="Peak resident memory of the server's processes.")
    server_requests: int | None = Field(
        default=None, description="Requests the server counted over the run (its /metrics)."
    )
    warnings: list[str] = Field(default_factory=list)
    interrupted_at_s: float | None = Field(
        default=None, description="Set when Ctrl-C ended the run early: how long it had run (the figures cover that)."
    )


class ModelKnobs(BaseModel):
    """The serving settings the tuner turns for one model."""

    max_ongoing_requests: int
    max_batch_size: int | None = Field(default=None, description="None: no dynamic batching.")
    batch_wait_timeout_s: float | None = None
    replicas: int
    embedded: bool = Field(
        default=False, description="Run inside the ingress replicas (no handle hop); replicas then do not apply."
    )

    def label(self) -> str:
        wait = f"/{self.batch_wait_timeout_s * 1000:g}ms" if self.batch_wait_timeout_s is not None else ""
        batch = f"batch {self.max_batch_size}{wait}" if self.max_batch_size else "no batching"
        where = (
            "embedded in the ingress" if self.embedded else f"{self.replicas} replica{'s' if self.replicas > 1 else ''}"
        )
        return f"{where}, max_ongoing {self.max_ongoing_requests}, {batch}"


class Trial(BaseModel):
    """One configuration, deployed and swept over user counts."""

    number: int
    knobs: dict[str, ModelKnobs]
    baseline: bool = Field(default=False, description="The spec's own configuration.")
    stages: list[StageResult] = Field(default_factory=list)
    best_rps: float = Field(
        default=0.0,
        description="Most successful requests/s of a stage with p95 within the SLO and no failures (0: none).",
    )
    best_p95_ms: float | None = None
    best_users: int | None = None
    error: str | None = Field(default=None, description="Why the trial has no result (e.g. it did not deploy).")

    def label(self) -> str:
        return "; ".join(f"{name}: {knobs.label()}" for name, knobs in self.knobs.items())


class TuneRecord(BaseModel):
    app: str
    slo_p95_ms: float
    max_trials: int
    trials: list[Trial] = Field(default_factory=list)
    best: int | None = Field(default=None, description="Number of the recommended trial.")
    stopped_because: str = ""
    tuned_spec: str | None = Field(default=None, description="File name of the tuned app spec, in the report folder.")
    summary: str = Field(default="", description="The recommendation and its gain, in one sentence.")

    def trial(self, number: int | None) -> Trial | None:
        return next((t for t in self.trials if t.number == number), None)

    @property
    def baseline(self) -> Trial | None:
        return next((t for t in self.trials if t.baseline), None)
