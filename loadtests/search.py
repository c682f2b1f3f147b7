"""The tuner's pure parts: the search space, the search (optuna, ask and tell), knobs <-> app specs, the verdict.

The search is a generator: it yields a configuration, is sent the measured
`Trial`, and returns why it stopped (budget spent, gains flattened, or
space exhausted). Measuring is the caller's business (tuner.tune).
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field

import optuna
import yaml

from serve_apps.loaders import traits
from serve_apps.spec import AppSpec, AutoscalingSpec, BatchingSpec, ModelSpec

from .records import ModelKnobs, StageResult, Trial

__all__ = [
    "ModelSpace",
    "Space",
    "apply_knobs",
    "baseline_knobs",
    "best_point",
    "default_space",
    "embeddable",
    "search",
    "tunable",
    "tuned_spec_yaml",
    "verdict",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)
# `group=True` (sample the batch wait only with batching on, as one group) is marked experimental.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
MAX_ONGOING = [4, 8, 16, 32, 64, 128]
BATCH_SIZES = [0, 8, 16, 32, 64]  # 0: no dynamic batching
BATCH_WAITS_S = [0.001, 0.002, 0.005, 0.01, 0.02]
REPLICAS = [1, 2, 3, 4]
# Stop when this many trials in a row have not beaten the best by MIN_GAIN.
PATIENCE = 4
MIN_GAIN = 0.02


@dataclass
class ModelSpace:
    max_ongoing: list[int]
    batch_sizes: list[int]
    batch_waits_s: list[float]
    replicas: list[int]
    num_cpus: float = 1.0
    embeddable: bool = False  # may run inside the ingress (see serve_apps.spec ModelSpec.embedded)


@dataclass
class Space:
    models: dict[str, ModelSpace]
    total_cpus: float
    fixed_cpus: float = 0.0  # the ingress and the models not tuned
    ingress_replicas: int = 1
    notes: list[str] = field(default_factory=list)

    def cpus(self, knobs: dict[str, ModelKnobs]) -> float:
        """An embedded model's CPUs are added to each ingress replica's."""
        return self.fixed_cpus + sum(
            (self.ingress_replicas if k.embedded else k.replicas) * self.models[name].num_cpus
            for name, k in knobs.items()
        )

    def fits(self, knobs: dict[str, ModelKnobs]) -> bool:
        return self.cpus(knobs) <= self.total_cpus + 1e-9

    def grid(self) -> list[dict[str, ModelKnobs]]:
        """Every configuration that fits (for the exhaustive baseline in bench/)."""
        per_model = {name: list(_model_grid(space)) for name, space in self.models.items()}
        configs = [dict(zip(per_model, combo, strict=True)) for combo in itertools.product(*per_model.values())]
        return [c for c in configs if self.fits(c)]

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, ModelKnobs]:
        knobs = {}
        for name, space in self.models.items():
            batch = trial.suggest_categorical(f"{name}.max_batch_size", space.batch_sizes)
            wait = trial.suggest_categorical(f"{name}.batch_wait_timeout_s", space.batch_waits_s) if batch else None
            embedded = trial.suggest_categorical(f"{name}.embedded", [False, True]) if space.embeddable else False
            knobs[name] = ModelKnobs(
                max_ongoing_requests=trial.suggest_categorical(f"{name}.max_ongoing_requests", space.max_ongoing),
                max_batch_size=batch or None,
                batch_wait_timeout_s=wait,
                embedded=embedded,
                replicas=1 if embedded else trial.suggest_categorical(f"{name}.replicas", space.replicas),
            )
        return knobs

    @staticmethod
    def params(knobs: dict[str, ModelKnobs]) -> dict[str, object]:
        params: dict[str, object] = {}
        for name, k in knobs.items():
            params[f"{name}.max_batch_size"] = k.max_batch_size or 0
            if k.max_batch_size:
                params[f"{name}.batch_wait_timeout_s"] = k.batch_wait_timeout_s
            params[f"{name}.max_ongoing_requests"] = k.max_ongoing_requests
            params[f"{name}.embedded"] = k.embedded
            if not k.embedded:
                params[f"{name}.replicas"] = k.replicas
        return params


def _model_grid(space: ModelSpace):
    placements = [(False, r) for r in space.replicas] + ([(True, 1)] if space.embeddable else [])
    for mor, batch, (embedded, replicas) in itertools.product(space.max_ongoing, space.batch_sizes, placements):
        for wait in space.batch_waits_s if batch else [None]:
            yield ModelKnobs(
                max_ongoing_requests=mor,
                max_batch_size=batch or None,
                batch_wait_timeout_s=wait,
                replicas=replicas,
                embedded=embedded,
            )


def tunable(model: ModelSpec) -> bool:
    """Pipelines only route: their steps are the models to tune."""
    return not traits(model.format.value).calls_models


def embeddable(spec: AppSpec, model: ModelSpec) -> bool:
    """What ModelSpec.embedded allows once apply_knobs has reset autoscaling, for a model no pipeline calls."""
    steps = {step.model for m in spec.models if m.pipeline for step in m.pipeline.steps}
    return model.name not in steps and model.why_not_embeddable(ignore={"autoscaling"}) is None


def _start_replicas(model: ModelSpec) -> int:
    scaling = model.autoscaling
    return max(1, scaling.initial_replicas if scaling.initial_replicas is not None else scaling.min_replicas)


def baseline_knobs(spec: AppSpec, models: list[str]) -> dict[str, ModelKnobs]:
    """The spec's own settings, as knobs (a model that may scale to zero is measured with the one replica a request
    wakes)."""
    knobs = {}
    for name in models:
        m = spec.model(name)
        knobs[name] = ModelKnobs(
            max_ongoing_requests=m.max_ongoing_requests,
            replicas=1 if m.embedded else _start_replicas(m),
            embedded=m.embedded,
            max_batch_size=m.batching.max_batch_size if m.batching else None,
            batch_wait_timeout_s=m.batching.batch_wait_timeout_s if m.batching else None,
        )
    return knobs


def default_space(spec: AppSpec, models: list[str], total_cpus: float | None = None) -> Space:
    """Knob values per model, the spec's own included; replica counts limited to what fits this machine's CPUs."""
    total = float(total_cpus or os.cpu_count() or 1)
    ingress = spec.ingress.num_replicas
    untuned = sum(
        m.resources.num_cpus * (ingress if m.embedded else _start_replicas(m))
        for m in spec.models
        if m.name not in models
    )
    base = baseline_knobs(spec, models)
    space = Space(
        models={}, total_cpus=total, fixed_cpus=spec.ingress.num_cpus * ingress + untuned, ingress_replicas=ingress
    )
    for name in models:
        m, b = spec.model(name), base[name]
        others = sum(spec.model(o).resources.num_cpus for o in models if o != name)
        room = total - space.fixed_cpus - others
        fit = max(1, math.floor(room / m.resources.num_cpus + 1e-9)) if m.resources.num_cpus else max(REPLICAS)
        replicas = sorted({r for r in REPLICAS if r <= fit} | {b.replicas})
        if fit < max(REPLICAS):
            space.notes.append(
                f"{name}: at most {fit} replica(s) of {m.resources.num_cpus:g} CPUs fit in {total:g} CPUs"
            )
        space.models[name] = ModelSpace(
            max_ongoing=sorted(set(MAX_ONGOING) | {b.max_ongoing_requests}),
            batch_sizes=sorted(set(BATCH_SIZES) | {b.max_batch_size or 0}),
            batch_waits_s=sorted(set(BATCH_WAITS_S) | ({b.batch_wait_timeout_s} if b.batch_wait_timeout_s else set())),
            replicas=replicas,
            num_cpus=m.resources.num_cpus,
            embeddable=embeddable(spec, m),
        )
    return space


def search(
    space: Space, baseline: dict[str, ModelKnobs], max_trials: int, seed: int = 0
) -> Generator[dict[str, ModelKnobs], Trial, str]:
    """Yield configurations, the baseline first; each is sent back measured. Returns why it stopped."""
    startup = min(4, max(1, max_trials // 3))  # random proposals before TPE models the results
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(Space.params(baseline), skip_if_exists=True)
    seen: dict[str, float] = {}
    best, stale, repeats = 0.0, 0, 0
    measured = 0
    while measured < max_trials:
        asked = study.ask()
        knobs = space.suggest(asked) if measured else baseline
        key = repr(sorted(Space.params(knobs).items()))
        if key in seen:  # already measured: the sampler learns the known result, the budget is not spent
            study.tell(asked, seen[key])
            repeats += 1
            if repeats > 50:
                return "every configuration the search still considers was measured"
            continue
        trial = yield knobs
        measured += 1
        seen[key] = trial.best_rps
        study.tell(asked, trial.best_rps)
        if trial.best_rps > best * (1 + MIN_GAIN):
            best, stale = trial.best_rps, 0
        else:
            stale += 1
        if stale >= PATIENCE and measured > startup + PATIENCE and measured < max_trials:  # TPE has had its turns
            return f"gains flattened: {PATIENCE} trials in a row without a {MIN_GAIN:.0%} improvement"
    return f"the budget of {max_trials} trials was spent"


def best_point(stages: list[StageResult], slo_p95_ms: float) -> StageResult | None:
    """The stage with the most (successful) throughput whose p95 is within the SLO and which had no failures."""
    ok = [s for s in stages if s.successes and not s.failures and s.p95_ms is not None and s.p95_ms <= slo_p95_ms]
    return max(ok, key=lambda s: s.rps, default=None)


def _max_ongoing(k: ModelKnobs) -> int:
    """Room for a full batch running and a full one waiting (ModelSpec's own default rule)."""
    return max(k.max_ongoing_requests, 2 * (k.max_batch_size or 0), 1)


def apply_knobs(spec: AppSpec, knobs: dict[str, ModelKnobs], *, fixed_replicas: bool = True) -> AppSpec:
    """A copy of the (resolved) spec with the knobs set; for a trial, the replica count is held fixed."""
    copy = spec.resolved()
    for name, k in knobs.items():
        model = copy.model(name)
        model.max_ongoing_requests = _max_ongoing(k)
        model.batching = (
            BatchingSpec(max_batch_size=k.max_batch_size, batch_wait_timeout_s=k.batch_wait_timeout_s)
            if k.max_batch_size and k.batch_wait_timeout_s is not None  # a batch size always comes with its wait
            else None
        )
        model.embedded = k.embedded
        if k.embedded:  # it scales with the ingress: its own autoscaling and queue limit do not apply
            model.autoscaling, model.max_queued_requests = AutoscalingSpec(), -1
        elif fixed_replicas:
            model.autoscaling = model.autoscaling.model_copy(
                update={"min_replicas": k.replicas, "max_replicas": k.replicas, "initial_replicas": k.replicas}
            )
    return AppSpec.model_validate(copy.model_dump())


def tuned_spec_yaml(spec: AppSpec, knobs: dict[str, ModelKnobs], targets: dict[str, float], header: str) -> str:
    """The recommendation as an app spec: knobs set, autoscaling kept but started at the tuned count and aimed at the
    measured load."""
    tuned = apply_knobs(spec, knobs, fixed_replicas=False)
    data = tuned.model_dump(mode="json", exclude_defaults=True)
    for model in data["models"]:
        if model["name"] not in knobs:
            continue
        k, original = knobs[model["name"]], spec.model(model["name"]).autoscaling
        upper = max(original.max_replicas, k.replicas)
        model["max_ongoing_requests"] = _max_ongoing(k)
        if k.embedded:
            continue  # scales with the ingress (ingress.num_replicas)
        model["autoscaling"] = {
            **original.model_dump(exclude_defaults=True),
            "min_replicas": original.min_replicas,
            "max_replicas": upper,
            "initial_replicas": min(max(k.replicas, original.min_replicas), upper),
            "target_ongoing_requests": targets.get(model["name"], original.target_ongoing_requests),
        }
    AppSpec.model_validate(data)  # what we write must load
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(data, sort_keys=False)


def verdict(best: Trial | None, baseline: Trial | None, slo_p95_ms: float, trials: int) -> str:
    """The one sentence a report leads with."""
    slo = f"p95 ≤ {slo_p95_ms:g} ms"
    if best is None or best.best_rps <= 0:
        return f"No configuration met {slo} in {trials} trial(s); relax the SLO or give the models more resources."
    rate = f"{best.best_rps:,.0f} requests/s"
    if baseline is None or best.number == baseline.number:
        return f"The current configuration is the best of {trials} trial(s): {rate} at {slo}."
    if baseline.best_rps <= 0:
        return f"Use trial {best.number} ({best.label()}): {rate} at {slo}, which the current configuration never met."
    gain = best.best_rps / baseline.best_rps
    return (
        f"Use trial {best.number} ({best.label()}): {gain:.1f}x the requests/s of the current config "
        f"({rate} vs {baseline.best_rps:,.0f}) at {slo}."
    )
