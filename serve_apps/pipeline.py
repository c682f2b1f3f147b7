"""A model made of models: calls its steps over Ray Serve handles, following the plan in `graph.py`.

Each step starts as soon as the steps it takes inputs from have answered,
so independent branches (e.g. two scorers of one featurizer's output) run
concurrently. Steps are ordinary model deployments: they batch, scale and
fail on their own, and a pipeline's requests share their batches with
direct callers. Concurrent requests' calls to one step leave as one handle
call (coalescing.py), or one call over the local hop (local_hop.py), as the
ingress's do.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray.serve.handle import DeploymentHandle

from ._deployment_states import DeploymentStates
from .coalescing import ManyRequests, model_hop
from .graph import REQUEST, Plan, Step, plan_pipeline
from .spec import ModelSpec
from .tensors import rows_of

__all__ = ["PipelineDeployment"]

Tensors = dict[str, np.ndarray]


class PipelineDeployment(ManyRequests):
    """A replica of one pipeline. `steps`: a handle per called model; `step_specs`: their specs, as dicts;
    `local_hop`: call steps whose replicas all run on this node over the local hop, and answer callers on this node
    over it too (local_hop.py)."""

    def __init__(
        self, model_spec: dict, steps: dict[str, DeploymentHandle], step_specs: dict[str, dict], local_hop: bool = False
    ):
        self.spec = ModelSpec.model_validate(model_spec)
        self.name = self.spec.name
        specs = {name: ModelSpec.model_validate(s) for name, s in step_specs.items()}
        self.plan: Plan = plan_pipeline(self.spec, specs)
        self.states = DeploymentStates()
        self.steps = {
            name: model_hop(handle, specs[name], self.states, local_hop=local_hop) for name, handle in steps.items()
        }
        if local_hop:
            self._open_local_door()

    async def _infer(self, inputs: Tensors) -> tuple[Tensors, int]:
        """(outputs, rows): the same contract as ModelDeployment.infer, so callers cannot tell them apart."""
        running: dict[str, asyncio.Task[Tensors]] = {}

        def value(source, results: dict[str, Tensors]) -> np.ndarray:
            return inputs[source.tensor] if source.step is REQUEST else results[source.step][source.tensor]

        async def call(step: Step) -> Tensors:
            results = {name: await running[name] for name in step.depends_on()}
            outputs, _ = await self.steps[step.model].call(
                None, {name: value(source, results) for name, source in step.inputs.items()}
            )
            return outputs

        for step in self.plan.steps:  # in order: every dependency is already running
            running[step.model] = asyncio.create_task(call(step))
        try:
            await asyncio.gather(*running.values())
        finally:
            for task in running.values():  # one step failed: do not leave the others running for nobody
                task.cancel()
        results = {name: task.result() for name, task in running.items()}
        return {name: value(source, results) for name, source in self.plan.outputs.items()}, rows_of(inputs)

    def ready(self) -> dict:
        return {"name": self.spec.name, "version": self.spec.version, "steps": [s.model for s in self.plan.steps]}
