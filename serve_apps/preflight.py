"""Prove a new version works before Serve replaces the old one.

Ray Serve swaps a deployment's replicas when its config changes, and if the
new replicas cannot start, the old ones are already gone: the app stops
answering. So before updating a live app, each model is fetched, loaded and
run on a sample request in a short Ray task on the cluster itself (where its
artifacts, packages and pool are). Only a version that passes is deployed.
"""

from __future__ import annotations

import traceback

from .spec import AppSpec, ModelSpec

__all__ = ["PreflightFailed", "preflight"]


class PreflightFailed(Exception):
    """A model of the new version cannot load or answer; the message names it and why."""


def _check_model(model_spec: dict) -> str | None:
    """Runs in a Ray task: fetch, load, predict one sample. None if fine, else one line saying why."""
    from providers.storage import fetch

    from .loaders import load_model
    from .samples import sample_v2
    from .tensors import decode_v2, rows_of

    spec = ModelSpec.model_validate(model_spec)
    if spec.pipeline is not None:
        return None  # its wiring was checked with the spec; its steps are checked as models of their own
    if spec.multiplex is not None and spec.multiplex.example_id is None:
        return None  # no id known to exist; each id is checked when first requested (unknown ids are a 404)
    model_id = spec.multiplex.example_id if spec.multiplex else None
    try:
        path = fetch(spec.artifact_uri(model_id), sha256=spec.artifact.sha256) if spec.artifact else None
        model = load_model(spec, path, "cpu")
        inputs, _, _ = decode_v2(sample_v2(spec, rows=2), spec)
        outputs = model.predict(inputs)
    except Exception as exc:  # anything a replica constructor would die of
        last = traceback.format_exception_only(exc)[-1].strip()
        return f"model {spec.name!r}: {last}"
    missing = [t.name for t in spec.outputs if t.name not in outputs]
    if missing:
        return f"model {spec.name!r}: returned no output(s) {missing}"
    wrong = {n: a.shape[0] for n, a in outputs.items() if a.shape[0] != rows_of(inputs)}
    if wrong:
        return f"model {spec.name!r}: returned {wrong} rows for {rows_of(inputs)} input rows"
    return None


def preflight(spec: AppSpec, timeout_s: float = 600) -> None:
    """Check every model of `spec` on the connected cluster; raise PreflightFailed on the first problem."""
    import ray

    from providers.compute import POOL_DEMAND, pool_resource

    resolved = spec.resolved()
    refs = []
    for model in resolved.models:
        # No CPU claim: the running version may hold the cluster's CPUs, and this check must not wait for them.
        resources = {pool_resource(model.resources.pool): POOL_DEMAND} if model.resources.pool else None
        task = ray.remote(_check_model).options(num_cpus=0, resources=resources, max_retries=0)
        refs.append(task.remote(model.model_dump(mode="json")))
    try:
        problems = [p for p in ray.get(refs, timeout=timeout_s) if p]
    except ray.exceptions.GetTimeoutError:
        raise PreflightFailed(
            f"models were not checked within {timeout_s:.0f}s (is the cluster out of capacity?)"
        ) from None
    if problems:
        raise PreflightFailed("; ".join(problems))
