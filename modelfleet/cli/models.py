"""`modelfleet models`: the model registry (registry/): register versions, move aliases, read history and lineage.

The store is `MODELFLEET_REGISTRY_URL` (default: SQLite at `$MODELFLEET_HOME/registry.db`); artifacts are published
under `MODELFLEET_ARTIFACT_ROOT` (default: `$MODELFLEET_HOME/artifacts`) at a content-addressed path.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer

from groundwork import SpecError
from providers.storage import StorageError, artifact_sha256
from registry import ModelVersion, RegistryError, parse_ref, publish

from .console import bad_input, failed, out
from .events import registry_events
from .registry_refs import open_registry

app = typer.Typer(help="The model registry: versions, aliases and their history, lineage.", no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _get(ref: str) -> ModelVersion:
    with open_registry() as store:
        return store.get(ref)


def _pairs(values: list[str], option: str) -> dict[str, Any]:
    """`k=v` options as a dict, numbers as numbers."""
    pairs: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            bad_input(f"{option} {value!r}: expected KEY=VALUE")
        try:
            pairs[key] = int(raw) if raw.lstrip("-").isdigit() else float(raw)
        except ValueError:
            pairs[key] = raw
    return pairs


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _lineage(dataset: str | None) -> dict[str, Any]:
    """Where this version came from, as far as this machine can tell: the data, the code, the command, the runtime."""
    lineage: dict[str, Any] = {"command": sys.argv, "runtime": {"python": platform.python_version()}}
    try:
        lineage["runtime"]["torch"] = metadata.version("torch")
    except metadata.PackageNotFoundError:
        pass
    commit = _git("rev-parse", "HEAD")
    if commit is not None:
        lineage["code"] = {"commit": commit, "dirty": bool(_git("status", "--porcelain"))}
    if dataset is not None:
        lineage["dataset"] = {"uri": dataset}
        if Path(dataset).exists():
            lineage["dataset"]["sha256"] = artifact_sha256(dataset)
    return lineage


def _reference_profile(path: Path, categorical: list[str]) -> Any:
    """The drift reference profile of `path` (monitoring/drift.py; numpy and scipy only here, when asked)."""
    from monitoring.drift import build_profile, load_reference_data

    try:
        return build_profile(load_reference_data(path), categorical=categorical, created_from=path.name)
    except SpecError as exc:
        bad_input(str(exc))


def _publish_profile(profile: Any) -> dict[str, Any]:
    """The profile published as the artifact is (content-addressed), for the lineage: {uri, sha256, rows, features}."""
    with tempfile.TemporaryDirectory(prefix="modelfleet-reference-") as folder:
        path = Path(folder) / "reference-profile.json"
        path.write_text(profile.model_dump_json())
        uri, sha256 = publish(str(path))
    return {"uri": uri, "sha256": sha256, "rows": profile.rows, "features": sorted(profile.features)}


def _show(version: ModelVersion) -> None:
    out.print(f"{version.uri}  ({', '.join(version.aliases) or 'no alias'})", markup=False)
    for label, value in (
        ("artifact", version.artifact_uri),
        ("sha256", version.sha256),
        ("format", version.format),
        ("module", version.module or "-"),
        ("created", f"{version.created_at:%Y-%m-%d %H:%M:%S %Z} by {version.created_by}"),
        ("metrics", json.dumps(version.metrics) if version.metrics else "-"),
        ("params", json.dumps(version.params) if version.params else "-"),
        ("tags", json.dumps(version.tags) if version.tags else "-"),
    ):
        out.print(f"  {label:<8} {value}", markup=False)


@app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="The model's name (created on its first version).", show_default=False)],
    source: Annotated[str, typer.Argument(help="The artifact: a local file or folder, or a storage URI.")],
    format: Annotated[str, typer.Option("--format", help="Its format, as a spec's `format:` says.")],
    module: Annotated[str | None, typer.Option("--module", help="The module:Class that loads it, if any.")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="KEY=VALUE; repeatable.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="KEY=VALUE; repeatable.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE; repeatable.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="The training data's URI or path.")] = None,
    reference_data: Annotated[
        Path | None,
        typer.Option(
            "--reference-data",
            help="Data the version's inputs are compared with for drift (.csv, .jsonl, .npz): profiled and published "
            "with it; a spec's `drift:` on a models:/ reference uses it.",
        ),
    ] = None,
    categorical: Annotated[
        list[str] | None, typer.Option("--categorical", help="A numeric feature to profile as categories; repeatable.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Register a new version of NAME: its artifact published at a content-addressed place, its lineage recorded."""
    metrics, params, tags = _pairs(metric or [], "--metric"), _pairs(param or [], "--param"), _pairs(tag or [], "--tag")
    try:
        parse_ref(name)
    except RegistryError as exc:
        bad_input(str(exc))
    if "://" not in source and not Path(source).exists():
        bad_input(f"{source}: no such file or folder (or give a storage URI: file://, s3://, gs://, az://, https://)")
    lineage = _lineage(dataset)
    profile = _reference_profile(reference_data, categorical or []) if reference_data is not None else None
    with registry_events() as send, open_registry() as store:
        try:
            uri, sha256 = publish(source)
            if profile is not None:
                lineage["reference"] = _publish_profile(profile)
        except StorageError as exc:
            failed(f"publishing {source}: {exc}")
        version = store.register(
            name,
            artifact_uri=uri,
            sha256=sha256,
            format=format,
            module=module,
            metrics=metrics,
            params=params,
            tags=tags,
            lineage=lineage,
        )
        send("model_version.created", version.model_dump(mode="json"), f"{version.name}/{version.version}")
    if as_json:
        out.print_json(version.model_dump_json())
    else:
        out.print(f"registered {version.uri} (sha256 {sha256[:12]}…, {uri})", markup=False)


@app.command("list")
def models_list(as_json: AsJson = False) -> None:
    """Every registered model: its newest version and its aliases."""
    with open_registry() as store:
        rows = [(name, store.get(name).version, store.aliases(name)) for name in store.models()]
    if as_json:
        out.print_json(json.dumps([{"name": n, "latest": v, "aliases": a} for n, v, a in rows]))
        return
    if not rows:
        out.print("no model is registered", markup=False)
        return
    width = max(len("NAME"), *(len(n) for n, _, _ in rows))
    out.print(f"{'NAME':<{width}}  LATEST  ALIASES", markup=False)
    for n, v, a in rows:
        aliases = ", ".join(f"{alias}={version}" for alias, version in sorted(a.items())) or "-"
        out.print(f"{n:<{width}}  {v:<6}  {aliases}", markup=False)


@app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME/VERSION or NAME@ALIAS.", show_default=False)],
    as_json: AsJson = False,
) -> None:
    """One version: its artifact, sha256, format, metrics, params, tags and aliases."""
    version = _get(ref)
    if as_json:
        out.print_json(version.model_dump_json())
    else:
        _show(version)


@app.command("alias")
def models_alias(
    target: Annotated[str, typer.Argument(help="NAME@ALIAS.", show_default=False)],
    version: Annotated[
        int | None, typer.Argument(help="The version the alias points at from now on.", show_default=False)
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Point the alias at nothing (kept in history).")] = False,
) -> None:
    """Point NAME@ALIAS at VERSION, or at nothing with --remove (either is kept in `models history`)."""
    if (version is None) != remove:
        bad_input(f"models alias {target}: give a VERSION, or --remove, not both")
    with registry_events() as send, open_registry() as store:
        ref = parse_ref(target)
        if ref.alias is None:
            raise RegistryError(f"{target!r} names no alias: NAME@ALIAS")
        before = store.aliases(ref.name).get(ref.alias)
        if version is None:
            store.remove_alias(ref.name, ref.alias)
            send("model_version_alias.deleted", {"name": ref.name, "alias": ref.alias, "version": before}, target)
        else:
            store.set_alias(ref.name, ref.alias, version)
            moved = {"name": ref.name, "alias": ref.alias, "version": version, "previous_version": before}
            send("model_version_alias.created", moved, f"{ref.name}@{ref.alias}")
    out.print(f"{ref.name}@{ref.alias} -> " + (f"models:/{ref.name}/{version}" if version else "(none)"), markup=False)


@app.command("history")
def models_history(
    name: Annotated[str, typer.Argument(help="The model's name.", show_default=False)], as_json: AsJson = False
) -> None:
    """Which version held which alias, from when to when; and every deployment of its versions (app, target,
    outcome). JSON: {"aliases": [...], "deployments": [...]}."""
    with open_registry() as store:
        spans, deployments = store.alias_history(name), store.deployments(name)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "aliases": [span.model_dump(mode="json") for span in spans],
                    "deployments": [d.model_dump(mode="json") for d in deployments],
                }
            )
        )
        return
    for span in spans:
        until = f"{span.end:%Y-%m-%d %H:%M:%S}" if span.end else "now"
        out.print(
            f"{span.alias:<12} v{span.version:<4} {span.start:%Y-%m-%d %H:%M:%S} .. {until}  (by {span.set_by})",
            markup=False,
        )
    for d in deployments:
        out.print(
            f"{d.outcome:<12} v{d.version:<4} {d.at:%Y-%m-%d %H:%M:%S}  app {d.app} at {d.target}  (by {d.actor})",
            markup=False,
        )


@app.command("lineage")
def models_lineage(
    ref: Annotated[str, typer.Argument(help="NAME/VERSION (or NAME@ALIAS).", show_default=False)],
    as_json: AsJson = False,
) -> None:
    """Where a version came from: its data, code, command and runtime."""
    version = _get(ref)
    if as_json:
        out.print_json(json.dumps({"model": version.name, "version": version.version, **version.lineage}))
        return
    out.print(version.uri, markup=False)
    for key, value in version.lineage.items():
        out.print(f"  {key:<8} {json.dumps(value)}", markup=False)


@app.command("delete")
def models_delete(ref: Annotated[str, typer.Argument(help="NAME/VERSION.", show_default=False)]) -> None:
    """Delete one version (refused while an alias points at it or it is deployed)."""
    with registry_events() as send, open_registry() as store:
        parsed = parse_ref(ref)
        if parsed.version is None:
            raise RegistryError(f"{ref!r} names no version: NAME/VERSION")
        store.delete_version(parsed.name, parsed.version)
        gone = {"name": parsed.name, "version": parsed.version}
        send("model_version.deleted", gone, f"{parsed.name}/{parsed.version}")
    out.print(f"deleted models:/{parsed.name}/{parsed.version}", markup=False)
