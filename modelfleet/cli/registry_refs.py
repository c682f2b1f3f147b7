"""Registry references in app specs, where the registry (registry/) and the app spec (serve_apps/) meet.

A spec may name an artifact `models:/NAME@ALIAS` or `models:/NAME/VERSION`. Whenever a command reads the spec it is
pinned here to what the registry holds now (artifact URI, sha256, version): an alias that moves later changes nothing
until the spec is read again, by the next deploy or rollout. `deploy`, `run` and `build` then record what they served.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from groundwork import SpecError
from serve_apps.spec import AppSpec

from .console import bad_input, failed, log
from .events import REGISTRY_SOURCE, audit

__all__ = ["open_registry", "pin_registry_refs", "record_served", "served_versions"]


@contextmanager
def open_registry() -> Iterator:
    """The store, opened (and migrated); a refusal is bad input (exit 2), a store that cannot be reached a failure."""
    from registry import Registry, RegistryError  # SQLAlchemy and Alembic load only for commands that need them

    try:
        store = Registry()
    except Exception as exc:  # a bad URL, an unreachable server, a missing driver: the cause, in one line
        failed(f"the model registry cannot be opened: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
    try:
        yield store
    except RegistryError as exc:
        bad_input(str(exc))
    finally:
        store.close()


def pin_registry_refs(spec: AppSpec, path: Path | str) -> None:
    """Replace each `models:/` artifact (a model's or a candidate's) by the registered version's URI and sha256, and
    set its version to the registered number; SpecError (file, field, fix) when the reference or the spec's own fields
    disagree. A candidate takes the registered module where the model's differs; a model must name it."""
    refs = spec.registry_refs()
    if not refs:
        return
    from registry import RegistryError

    with open_registry() as store:
        for where, model, artifact, candidate in refs:
            assert artifact.registry_ref is not None
            ref, owner = artifact.registry_ref, where.rsplit(".", 1)[0]
            try:
                registered = store.get(ref)
            except RegistryError as exc:
                raise SpecError(path, f"{where}.uri", f"{exc} (see `modelfleet models list`)") from None
            if registered.format != model.format.value:
                raise SpecError(
                    path,
                    f"{owner}.format",
                    f"{ref} is {registered.uri}, a {registered.format} artifact; set format: {registered.format}",
                )
            module = candidate.module if candidate is not None and candidate.module else model.module
            if registered.module and module and registered.module != module:
                if candidate is not None and not candidate.module:
                    candidate.module = registered.module  # a candidate's class may differ from the model's
                else:
                    raise SpecError(
                        path,
                        f"{owner}.module",
                        f"{registered.uri} was registered with module {registered.module}; "
                        f"set module: {registered.module}",
                    )
            if artifact.sha256 and artifact.sha256 != registered.sha256:
                raise SpecError(
                    path,
                    f"{where}.sha256",
                    f"{registered.uri} has sha256 {registered.sha256}; remove the spec's "
                    "sha256 (the registry pins it) or fix it",
                )
            holder = candidate if candidate is not None else model
            if "version" in holder.model_fields_set and holder.version != str(registered.version):
                raise SpecError(
                    path,
                    f"{owner}.version",
                    f"{ref} is version {registered.version}, the spec says "
                    f"{holder.version!r}; remove version: (the registry's number is served)",
                )
            artifact.uri, artifact.sha256 = registered.artifact_uri, registered.sha256
            artifact.registered_as = ref
            holder.version = str(registered.version)
            if candidate is None and model.drift is not None and not model.drift.reference:
                reference = registered.lineage.get("reference")
                if not reference:
                    raise SpecError(
                        path,
                        f"{owner}.drift.reference",
                        f"{registered.uri} was registered without reference data; register it with --reference-data "
                        "DATA, or set drift.reference",
                    )
                model.drift.reference = reference["uri"]  # the profile published with the version
    for i, model in enumerate(spec.models):
        versions = [model.version, *(c.version for c in model.candidates)]
        dupes = sorted({v for v in versions if v is not None and versions.count(v) > 1})
        if dupes:
            raise SpecError(
                path,
                f"models[{i}:{model.name}].candidates",
                f"version(s) {dupes} served twice once pinned; each version once, the model's own included",
            )


def served_versions(spec: AppSpec) -> list[tuple[str, int]]:
    """(registered name, version) of each model the spec pinned from the registry."""
    from registry import parse_ref

    served = []
    for _, model, artifact, candidate in spec.artifacts():
        if artifact.registered_as:
            version = candidate.version if candidate is not None else model.version
            served.append((parse_ref(artifact.registered_as).name, int(str(version))))
    return served


def record_served(spec: AppSpec, target: str, outcome: str) -> None:
    """Record in the registry what the app serves at `target` after a deploy with `outcome` (deployed, failed,
    stopped, built), and write it in the audit log. Best effort: the deploy has happened either way, so a store that
    fails here is a warning."""
    action = {"deployed": "deploy", "failed": "deploy", "built": "build"}.get(outcome, f"app.{outcome}")
    models = {m.name: m.version for m in spec.models}
    audit(action, f"app:{spec.name}@{target}", "failed" if outcome == "failed" else "ok", {"models": models})
    served = served_versions(spec)
    if not served:
        return
    from monitoring.notifier import notifier_from_env
    from registry import Registry

    try:
        store = Registry()
        try:
            store.record_served(spec.name, target, served, outcome)
        finally:
            store.close()
    except Exception as exc:
        log.warning(f"the registry did not record that {spec.name!r} was {outcome} at {target}: {exc}")
        return
    try:
        with notifier_from_env() as notifier:
            for name, version in served:
                data = {"app": spec.name, "name": name, "version": version, "target": target, "outcome": outcome}
                notifier.send(REGISTRY_SOURCE, "deployment.recorded", data, f"{name}/{version}")
    except SpecError as exc:
        log.warning(f"no webhook was told that {spec.name!r} was {outcome} at {target}: {exc}")
