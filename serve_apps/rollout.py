"""What a rollout needs from the serving side: per-version tallies, the desk that holds a rollout's traffic, the
candidate's own Serve application, and the judgement of a window.

A rollout serves its candidate from a Serve application of its own (`candidate_app`), so that starting, stopping or
failing it never touches the app: Serve redeploys every deployment of an app on any change, and a rollback must leave
the baseline as it was. The weights live on the app's desk, a small named Ray actor (`RolloutDesk`): the rollout
command sets them, and every ingress replica asks for them twice a second (`SYNC_S`) while handing over its tallies, so
a weight change reaches all of them in place, with nothing redeployed and nothing dropped. Each change is numbered,
and the desk knows which number each replica was last told (`RolloutDesk.unheard`): a rollout removes a candidate only
once every live ingress replica has stopped sending it requests. Without a desk the ingress serves the spec's own
`candidates:`.

Tallies are cumulative (a replica's lost report loses nothing: the next one carries it); the rollout command
subtracts the tally at a window's start from the tally at its end, for the baseline and the candidate alike, and
`judge` compares the two windows.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .spec import ModelSpec
from .traffic import candidate_deployment

__all__ = [
    "DESK_NAMESPACE",
    "LATENCY_BUCKETS_S",
    "LOOK_S",
    "Limits",
    "RolloutDesk",
    "SILENT_S",
    "SYNC_S",
    "Verdict",
    "VersionTally",
    "agreement",
    "candidate_app",
    "close_desk_if_idle",
    "deploy_candidate",
    "desk_name",
    "find_desk",
    "judge",
    "open_desk",
    "remove_candidate",
]

SYNC_S = 0.5  # how often an ingress replica reports to the desk and reads its traffic, while there is a desk
# An ingress replica not heard from for this long is taken for gone (stopped by a rolling update, or dead): a change
# of traffic does not wait for it to hear.
SILENT_S = 4 * SYNC_S
LOOK_S = 2.0  # how often it looks for a desk while there is none (a rollout's first step waits this long at most)
DESK_NAMESPACE = "modelfleet"
# Latency buckets for a version's p95: 0.5 ms to ~28 s, each 20% wider than the last (a p95 within 10%).
LATENCY_BUCKETS_S = tuple(0.0005 * 1.2**i for i in range(61))


def desk_name(app: str) -> str:
    return f"modelfleet-desk:{app}"


def candidate_app(app: str, model: str, version: str) -> str:
    """The Serve application a rollout serves its candidate from."""
    return f"{app}--rollout--{model}--{version}"


@dataclass
class VersionTally:
    """One version's requests since its ingress replica started (cumulative), or over a window (`minus`)."""

    requests: int = 0
    errors: int = 0  # answered with a 5xx: the server's fault (a client's 4xx is not the version's)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    shadowed: int = 0  # copies of requests answered by another version
    shadow_errors: int = 0
    shadow_rows: int = 0  # rows compared with the answering version's
    shadow_rows_agreed: int = 0  # same label (argmax of scores, or the value itself)
    shadow_max_abs_diff: float = 0.0

    def record(self, status: int, seconds: float) -> None:
        self.requests += 1
        self.errors += status >= 500
        self.latency[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    def record_shadow(self, seconds: float, compared: tuple[int, int, float] | None) -> None:
        """A shadow copy answered in `seconds`: `compared` is (rows, rows agreed, max |diff|); None if it failed."""
        self.shadowed += 1
        self.latency[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        if compared is None:
            self.shadow_errors += 1
            return
        rows, agreed, diff = compared
        self.shadow_rows += rows
        self.shadow_rows_agreed += agreed
        self.shadow_max_abs_diff = max(self.shadow_max_abs_diff, diff)

    def plus(self, other: VersionTally) -> VersionTally:
        return VersionTally(
            self.requests + other.requests,
            self.errors + other.errors,
            [a + b for a, b in zip(self.latency, other.latency, strict=True)],
            self.shadowed + other.shadowed,
            self.shadow_errors + other.shadow_errors,
            self.shadow_rows + other.shadow_rows,
            self.shadow_rows_agreed + other.shadow_rows_agreed,
            max(self.shadow_max_abs_diff, other.shadow_max_abs_diff),
        )

    def minus(self, earlier: VersionTally) -> VersionTally:
        """What happened since `earlier` (a max |diff| cannot be subtracted: it stays the whole run's)."""
        return VersionTally(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            [a - b for a, b in zip(self.latency, earlier.latency, strict=True)],
            self.shadowed - earlier.shadowed,
            self.shadow_errors - earlier.shadow_errors,
            self.shadow_rows - earlier.shadow_rows,
            self.shadow_rows_agreed - earlier.shadow_rows_agreed,
            self.shadow_max_abs_diff,
        )

    @property
    def error_rate(self) -> float:
        answered = self.requests + self.shadowed
        return (self.errors + self.shadow_errors) / answered if answered else 0.0

    def quantile_s(self, q: float) -> float | None:
        """The latency below which a share `q` of the answers fell (the upper edge of its bucket); None if none."""
        total = sum(self.latency)
        if not total:
            return None
        rank, seen = math.ceil(q * total), 0
        for i, count in enumerate(self.latency):
            seen += count
            if seen >= rank:
                return LATENCY_BUCKETS_S[i] if i < len(LATENCY_BUCKETS_S) else math.inf
        return math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionTally:
        return cls(**data)


def agreement(answer: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> tuple[int, int, float]:
    """(rows, rows agreed, max |diff|) of a shadow's outputs against the answer's: rows agree when every output names
    the same label (the argmax of a row of scores, else the row's values); numbers also give their largest gap."""
    rows = len(next(iter(answer.values())))
    agreed = np.ones(rows, dtype=bool)
    diff = 0.0
    for name, ours in answer.items():
        theirs = shadow.get(name)
        if theirs is None or theirs.shape != ours.shape:
            return rows, 0, math.inf
        numeric = ours.dtype.kind in "fiub" and theirs.dtype.kind in "fiub"
        if numeric and ours.size:
            diff = max(diff, float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)))))
        if numeric and ours.dtype.kind == "f" and ours.ndim == 2 and ours.shape[1] > 1:
            agreed &= ours.argmax(axis=1) == theirs.argmax(axis=1)
        else:
            agreed &= (ours.reshape(rows, -1) == theirs.reshape(rows, -1)).all(axis=1)
    return rows, int(agreed.sum()), diff


class RolloutDesk:
    """An app's rollouts, as its ingress replicas see them: the traffic per model, and every replica's tallies.

    A named, detached Ray actor (`desk_name(app)` in `DESK_NAMESPACE`), made by the rollout command and removed when
    no rollout runs; it holds no state the registry does not (a lost desk is made again from the stored rollout)."""

    def __init__(self) -> None:
        self._traffic: dict[str, dict[str, Any]] = {}
        self._tallies: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # replica -> model -> version -> tally
        self._change = 0  # how many times the traffic was set
        self._told: dict[str, tuple[float, int]] = {}  # replica -> (when it last synced, the change it was told)

    def set_traffic(self, model: str, traffic: dict[str, Any] | None) -> int:
        """`ModelTraffic.to_dict()` for `model`, or None: the model's own traffic again (its spec's). The change's
        number, for `unheard`."""
        if traffic is None:
            self._traffic.pop(model, None)
        else:
            self._traffic[model] = traffic
        self._change += 1
        return self._change

    def traffic(self) -> dict[str, dict[str, Any]]:
        return self._traffic

    def sync(self, replica: str, tallies: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        """An ingress replica's report (its cumulative tallies); answered with the traffic it should route by."""
        self._tallies[replica] = tallies
        self._told[replica] = (time.monotonic(), self._change)
        return self._traffic

    def unheard(self, change: int) -> list[str]:
        """The live ingress replicas (heard within SILENT_S) that have not yet been told of `change`."""
        now = time.monotonic()
        return [r for r, (at, told) in self._told.items() if told < change and now - at <= SILENT_S]

    def tallies(self, model: str) -> dict[str, dict[str, Any]]:
        """`model`'s tallies per version, summed over every ingress replica that ever reported."""
        summed: dict[str, VersionTally] = {}
        for by_model in self._tallies.values():
            for version, tally in by_model.get(model, {}).items():
                summed[version] = summed.get(version, VersionTally()).plus(VersionTally.from_dict(tally))
        return {version: tally.to_dict() for version, tally in summed.items()}


@dataclass(frozen=True)
class Limits:
    """What a candidate must stay within, over a window with at least `min_requests` of its own."""

    max_error_rate: float = 0.01
    max_p95_ratio: float | None = 1.25  # the candidate's p95 against the baseline's
    max_p95_ms: float | None = None
    min_requests: int = 100


@dataclass(frozen=True)
class Verdict:
    outcome: Literal["pass", "breach", "inconclusive"]
    reason: str


def judge(
    candidate: VersionTally, baseline: VersionTally, limits: Limits, baseline_p95_s: float | None, latency: bool = True
) -> Verdict:
    """One window of the candidate against the same window of the baseline. `baseline_p95_s`: the baseline's p95
    from an earlier window, for when this one gave the baseline too few requests (at 100% it gets none).

    Too few requests is inconclusive, never a pass; errors are judged first (they need no baseline). `latency`
    False leaves latency out: a window still running is judged on errors alone, since failed requests are lost at
    once, while a p95 over its first seconds is mostly the candidate's warm-up."""
    seen = candidate.requests + candidate.shadowed
    if seen < limits.min_requests:
        return Verdict("inconclusive", f"{seen} requests, fewer than --min-requests {limits.min_requests}")
    rate = candidate.error_rate
    if rate > limits.max_error_rate:
        return Verdict("breach", f"error rate {rate:.2%} > {limits.max_error_rate:.2%}")
    p95 = candidate.quantile_s(0.95)
    assert p95 is not None  # it has requests
    if not latency:
        return Verdict("pass", f"{seen} requests, error rate {rate:.2%} (latency judged at the window's end)")
    if limits.max_p95_ms is not None and p95 * 1000 > limits.max_p95_ms:
        return Verdict("breach", f"p95 {p95 * 1000:.1f} ms > {limits.max_p95_ms:g} ms")
    if limits.max_p95_ratio is not None:
        base = baseline.quantile_s(0.95) if baseline.requests >= limits.min_requests else baseline_p95_s
        if base is None:
            return Verdict("inconclusive", "no baseline p95 to compare with yet")
        if p95 > limits.max_p95_ratio * base:
            return Verdict(
                "breach", f"p95 {p95 * 1000:.1f} ms > {limits.max_p95_ratio:g} x the baseline's {base * 1000:.1f} ms"
            )
    return Verdict("pass", f"{seen} requests, error rate {rate:.2%}, p95 {p95 * 1000:.1f} ms")


# ---- on the cluster: the desk and the candidate's application (a Ray driver calls these) --------------------------


def open_desk(app: str) -> Any:
    """The app's desk (a handle to the named actor), made if none runs."""
    import ray

    desk = ray.remote(num_cpus=0)(RolloutDesk)
    return desk.options(name=desk_name(app), namespace=DESK_NAMESPACE, lifetime="detached", get_if_exists=True).remote()


def find_desk(app: str) -> Any | None:
    import ray

    try:
        return ray.get_actor(desk_name(app), namespace=DESK_NAMESPACE)
    except ValueError:
        return None


def close_desk_if_idle(app: str) -> None:
    """Remove the app's desk once no model's traffic is on it (the ingress replicas then follow their specs)."""
    import ray

    desk = find_desk(app)
    if desk is not None and not ray.get(desk.traffic.remote(), timeout=30):
        ray.kill(desk)


def deploy_candidate(app: str, candidate: ModelSpec, local_hop: bool = True) -> str:
    """Start serving `candidate` (a model's other version, `ModelSpec.candidate_spec`) in an application of its own,
    beside `app`, without waiting; its name. (No route prefix: only the app's ingress reaches it.)"""
    from ray import serve
    from ray.serve.api import RunTarget

    from .build import deployment_options
    from .deployment import ModelDeployment

    name = candidate_app(app, candidate.name, candidate.version)
    deployment = candidate_deployment(candidate.name, candidate.version)
    bound = (
        serve.deployment(ModelDeployment)  # type: ignore[attr-defined]  # Ray's hints cover its decorator forms only
        .options(**deployment_options(candidate, None, deployment))
        .bind(candidate.model_dump(mode="json"), local_hop)
    )
    serve.run_many([RunTarget(target=bound, name=name, route_prefix=None)], wait_for_applications_running=False)
    return name


def remove_candidate(app: str, model: str, version: str) -> None:
    """Stop serving a candidate (its replicas drain); nothing of `app` itself changes."""
    from ray import serve

    name = candidate_app(app, model, version)
    if name in serve.status().applications:
        serve.delete(name, _blocking=False)
