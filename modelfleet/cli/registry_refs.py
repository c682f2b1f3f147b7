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
from .events import REGISTRY_SOURCE

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
    """Replace each `models:/` artifact by the registered version's URI and sha256, and set the model's version to
    the registered number; SpecError (file, field, fix) when the reference or the spec's own fields disagree."""
    refs = spec.registry_refs()
    if not refs:
        return
    from registry import RegistryError

    with open_registry() as store:
        for i, model in refs:
            assert model.artifact is not None and model.artifact.registry_ref is not None
            ref, where = model.artifact.registry_ref, f"models[{i}:{model.name}]"
            try:
                registered = store.get(ref)
            except RegistryError as exc:
                raise SpecError(path, f"{where}.artifact.uri", f"{exc} (see `modelfleet models list`)") from None
            if registered.format != model.format.value:
                raise SpecError(
                    path,
                    f"{where}.format",
                    f"{ref} is {registered.uri}, a {registered.format} artifact; set format: {registered.format}",
                )
            if registered.module and model.module and registered.module != model.module:
                raise SpecError(
                    path,
                    f"{where}.module",
                    f"{registered.uri} was registered with module {registered.module}; set module: {registered.module}",
                )
            if model.artifact.sha256 and model.artifact.sha256 != registered.sha256:
                raise SpecError(
                    path,
                    f"{where}.artifact.sha256",
                    f"{registered.uri} has sha256 {registered.sha256}; remove the "
                    "spec's sha256 (the registry pins it) or fix it",
                )
            if "version" in model.model_fields_set and model.version != str(registered.version):
                raise SpecError(
                    path,
                    f"{where}.version",
                    f"{ref} is version {registered.version}, the spec says "
                    f"{model.version!r}; remove version: (the registry's number is served)",
                )
            model.artifact.uri, model.artifact.sha256 = registered.artifact_uri, registered.sha256
            model.artifact.registered_as = ref
            model.version = str(registered.version)


def served_versions(spec: AppSpec) -> list[tuple[str, int]]:
    """(registered name, version) of each model the spec pinned from the registry."""
    from registry import parse_ref

    return [
        (parse_ref(m.artifact.registered_as).name, int(m.version))
        for m in spec.models
        if m.artifact is not None and m.artifact.registered_as
    ]


def record_served(spec: AppSpec, target: str, outcome: str) -> None:
    """Record in the registry what the app serves at `target` after a deploy with `outcome` (deployed, failed,
    stopped, built). Best effort: the deploy has happened either way, so a store that fails here is a warning."""
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
