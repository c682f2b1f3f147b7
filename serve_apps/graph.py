"""Pipeline wiring: which tensor feeds which step, checked before anything runs.

A pipeline step's input comes from the request or from an earlier step's
output; this module resolves every such edge once, from the spec, and
refuses what could only fail at request time: unknown models or tensors,
ambiguous names, mismatched datatypes or shapes, and cycles between
pipelines. The runtime (`pipeline.py`) then follows the resolved plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import ModelSpec, TensorSpec

__all__ = ["Plan", "Source", "Step", "check_pipelines", "plan_pipeline"]

REQUEST = None  # Source.step for a tensor of the pipeline's own request


@dataclass(frozen=True)
class Source:
    step: str | None  # REQUEST, or the model name of an earlier step
    tensor: str


@dataclass(frozen=True)
class Step:
    model: str
    inputs: dict[str, Source]

    def depends_on(self) -> set[str]:
        return {s.step for s in self.inputs.values() if s.step is not REQUEST}


@dataclass(frozen=True)
class Plan:
    steps: list[Step]
    outputs: dict[str, Source]


def _fits(source: TensorSpec, target: TensorSpec) -> str | None:
    """Why `source` cannot feed `target`, or None."""
    if source.datatype != target.datatype:
        return f"datatype {source.datatype.value} cannot feed {target.datatype.value}"
    if len(source.shape) != len(target.shape) or any(
        s != t and -1 not in (s, t) for s, t in zip(source.shape[1:], target.shape[1:], strict=True)
    ):
        return f"shape {source.shape} cannot feed {target.shape}"
    return None


class _Resolver:
    """Tensors visible so far in one pipeline: its request inputs, then each step's outputs."""

    def __init__(self, pipeline: ModelSpec):
        self.where = f"models[{pipeline.name}].pipeline"
        self.tensors: dict[Source, TensorSpec] = {Source(REQUEST, t.name): t for t in pipeline.inputs}
        self.steps: list[str] = []

    def add_step(self, model: ModelSpec) -> None:
        self.steps.append(model.name)
        self.tensors.update({Source(model.name, t.name): t for t in model.outputs})

    def _parse(self, ref: str) -> Source:
        step, dot, tensor = ref.partition(".")
        if dot and step in self.steps:
            return Source(step, tensor)
        return Source(REQUEST, ref)

    def _by_name(self, name: str, field: str) -> Source:
        if Source(REQUEST, name) in self.tensors:
            return Source(REQUEST, name)
        found = [s for s in self.tensors if s.step is not REQUEST and s.tensor == name]
        if len(found) == 1:
            return found[0]
        if not found:
            raise ValueError(
                f"{field}: nothing named {name!r} in the request or earlier steps' outputs; map it, e.g. {name}: "
                "<step>.<output>"
            )
        options = " or ".join(f"{s.step}.{s.tensor}" for s in found)
        raise ValueError(f"{field}: {name!r} is ambiguous; map it to {options}")

    def resolve(self, name: str, target: TensorSpec, ref: str | None, field: str) -> Source:
        source = self._by_name(name, field) if ref is None else self._parse(ref)
        if source not in self.tensors:
            have = sorted(t.tensor if t.step is REQUEST else f"{t.step}.{t.tensor}" for t in self.tensors)
            raise ValueError(f"{field}: {ref!r} is neither a request input nor an earlier step's output; one of {have}")
        problem = _fits(self.tensors[source], target)
        if problem:
            raise ValueError(f"{field}: {ref or name!r} does not fit ({problem})")
        return source


def plan_pipeline(pipeline: ModelSpec, models: dict[str, ModelSpec]) -> Plan:
    """Resolve every input of every step, and every pipeline output; ValueError names the field on any problem."""
    assert pipeline.pipeline is not None
    resolver, steps = _Resolver(pipeline), []
    for i, step in enumerate(pipeline.pipeline.steps):
        field = f"{resolver.where}.steps[{i}]"
        model = models.get(step.model)
        if model is None:
            raise ValueError(f"{field}.model: no model {step.model!r} in this app; it has {sorted(models)}")
        if model.name == pipeline.name:
            raise ValueError(f"{field}.model: a pipeline cannot call itself")
        if model.name in resolver.steps:
            raise ValueError(f"{field}.model: {model.name!r} is already a step; call each model once")
        if model.multiplex is not None:
            raise ValueError(
                f"{field}.model: {model.name!r} is a multiplexed family, which cannot be a pipeline step yet"
            )
        if model.embedded:
            raise ValueError(
                f"{field}.model: {model.name!r} is embedded in the ingress, so no handle reaches it; remove its "
                "embedded: true"
            )
        declared = {t.name for t in model.inputs}
        unknown = sorted(set(step.inputs) - declared)
        if unknown:
            raise ValueError(f"{field}.inputs: {model.name!r} has no input(s) {unknown}; it takes {sorted(declared)}")
        inputs = {
            t.name: resolver.resolve(t.name, t, step.inputs.get(t.name), f"{field}.inputs.{t.name}")
            for t in model.inputs
        }
        steps.append(Step(model.name, inputs))
        resolver.add_step(model)
    unknown = sorted(set(pipeline.pipeline.outputs) - {t.name for t in pipeline.outputs})
    if unknown:
        raise ValueError(f"{resolver.where}.outputs: {unknown} are not among the model's declared outputs")
    outputs = {
        t.name: resolver.resolve(t.name, t, pipeline.pipeline.outputs.get(t.name), f"{resolver.where}.outputs.{t.name}")
        for t in pipeline.outputs
    }
    return Plan(steps, outputs)


def check_pipelines(models: list[ModelSpec]) -> None:
    """No pipeline reaches itself through others, and every pipeline of an app wires up."""
    by_name = {m.name: m for m in models}
    calls = {m.name: [s.model for s in m.pipeline.steps] for m in models if m.pipeline is not None}

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise ValueError(f"models[{name}].pipeline: pipelines call each other in a cycle ({cycle}); break it")
        for callee in calls.get(name, []):
            visit(callee, [*path, name])

    for name, steps in calls.items():
        versioned = sorted(s for s in steps if s in by_name and by_name[s].candidates)
        if versioned:
            raise ValueError(
                f"models[{name}].pipeline: its step(s) {versioned} serve candidates, and a pipeline calls one version "
                "of each step; remove their candidates"
            )
    for name in calls:
        visit(name, [])
    for name in calls:
        plan_pipeline(by_name[name], by_name)
