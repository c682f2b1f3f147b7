"""The serving commands: validate, schema, build, deploy (onto a running Ray), status; `run` is in run.py."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from rich.markup import escape

from groundwork import is_loopback_host, local_rays
from serve_apps.auth import ENV_VAR as KEYS_ENV_VAR
from serve_apps.auth import KeyRing
from serve_apps.spec import AppSpec

from .console import (
    AppPath,
    app_keys,
    bad_input,
    duration_s,
    ends_on_interrupt,
    err,
    failed,
    keys_for_host,
    load_app,
    log,
    out,
    ray_notices_on_stderr,
)
from .registry_refs import record_served

if TYPE_CHECKING:  # serve_apps.build imports Ray
    from serve_apps.build import LocalNeed

__all__ = [
    "InsecureNoRayAuth",
    "MAX_PORT",
    "build",
    "deploy",
    "deploy_with_progress",
    "forget_plaintext_keys",
    "require_ray_auth",
    "schema",
    "status",
    "validate",
]

# A deploy that has not converged in this long will not: its cause is in Serve's status, not in more waiting.
MAX_DEPLOY_WAIT_S = 2 * 3600
MAX_PORT = 65535


def forget_plaintext_keys() -> None:
    """Once read (and hashed), the plaintext keys leave the environment, so Ray's processes never inherit them."""
    os.environ.pop(KEYS_ENV_VAR, None)


InsecureNoRayAuth = Annotated[
    bool,
    typer.Option(
        "--insecure-no-ray-auth",
        help="Allow RAY_AUTH_MODE=disabled: anyone who reaches Ray's ports (Serve replicas' gRPC included) runs code.",
    ),
]


def require_ray_auth(insecure: bool, on_what: str) -> None:
    """Exit 2 when Ray's token auth is off, unless the operator said --insecure-no-ray-auth (before Ray starts)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None or mode.lower() == "token":  # unset: Ray 2.60 turns token auth on for the Ray we start or join
        return
    why = (
        f"RAY_AUTH_MODE={mode}: refusing to run Ray without token auth, since every Serve replica runs a gRPC server "
        f"that unpickles request metadata and anyone who reaches it runs code {on_what}"
    )
    if not insecure:
        bad_input(f"{why}; unset RAY_AUTH_MODE (or set it to token), or pass --insecure-no-ray-auth to accept that")
    log.warning(
        f"--insecure-no-ray-auth: Ray runs without token auth; anyone who reaches its ports runs code {on_what}"
    )


def validate(spec_path: AppPath) -> None:
    """Check an app spec (schema and semantics) without starting anything."""
    spec = load_app(spec_path)
    app_keys(spec)
    out.print(f"{spec_path}: ok — app {spec.name!r}, models: {', '.join(m.name for m in spec.models)}")


def schema() -> None:
    """Print the JSON schema of the app spec (for editors and CI)."""
    out.print_json(json.dumps(AppSpec.model_json_schema()))


def build(
    spec_path: AppPath,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
    host: Annotated[
        str, typer.Option(help="HTTP host for the Serve proxies; non-loopback exposes the models (needs API keys).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=MAX_PORT, help="HTTP port for the Serve proxies.")] = 8000,
) -> None:
    """Write a Ray Serve config that `serve deploy` accepts; say which files and code of this machine it names."""
    from serve_apps.build import local_needs, serve_config

    spec = load_app(spec_path)
    keys = keys_for_host(spec, spec_path, host)
    try:
        config = serve_config(spec, host=host, port=port, keys=keys)
    except ValueError as exc:  # what a Serve config cannot express (e.g. asking clients for certificates)
        bad_input(f"{spec_path}: {exc}")
    text = yaml.safe_dump(config, sort_keys=False)
    if output is None:
        out.print(text, end="", markup=False)
    else:
        output.write_text(text)
        err.print(f"wrote {output}", soft_wrap=True, markup=False)
    record_served(spec, f"serve-config:{output.resolve() if output else 'stdout'}", "built")
    _print_local_needs(local_needs(config))


def _print_local_needs(needs: list[LocalNeed]) -> None:
    """The nodes `serve deploy` reaches are not this machine: say what they need from it, and the ways around it."""
    if not needs:
        return
    width = max(len(n.what) for n in needs)
    lines = [f"  {n.what:<{width}}  {n.field}: {n.nodes}" for n in needs]
    ways = []
    if any(n.field.endswith(".artifact.uri") for n in needs):
        ways.append("give artifacts s3://, gs://, az:// or https:// URIs, which each node fetches itself")
    if any(n.field.endswith(".module") for n in needs):
        ways.append("ship modules in the application's runtime_env (py_modules or working_dir, at a remote URI)")
    err.print(
        "note: this config names files and code of this machine, and Ray copies none of them: these nodes need the "
        "files at the same paths and the modules importable (installed, or in their image):\n"
        + "\n".join(lines)
        + ("\n  or " + "; ".join(ways) if ways else ""),
        soft_wrap=True,
        markup=False,
    )


RayAddress = Annotated[
    str | None,
    typer.Option(
        help="Ray address (GCS host:port), as `run` or `cluster up` prints it; default: RAY_ADDRESS, else the one "
        "`modelfleet run` or local-sim cluster running on this machine.",
        show_default=False,
    ),
]


def _resolve(address: str | None) -> str:
    try:
        return address or local_rays.default_ray_address()
    except local_rays.NoRayFound as exc:
        bad_input(str(exc))


def _launched_cluster(address: str):
    """The cluster `cluster up` launched from this machine (onprem or a cloud) at `address` (or by that name)."""
    from cluster.remote import find

    return find(address)


def _connect(address: str, py_modules: list[str] | None = None):
    from serve_apps.deploy import RayTarget

    try:
        target = RayTarget.connect(address, py_modules)
        # Serve's driver-side notices ("Connecting to existing Serve app", ...): the status line says more. A filter,
        # not a level, since Serve sets its logger's level again when it starts.
        logging.getLogger("ray.serve").addFilter(lambda record: record.levelno >= logging.ERROR)
        return target
    except (ConnectionError, RuntimeError, ValueError) as exc:
        failed(f"cannot connect to Ray at {address}: {str(exc).splitlines()[0]}")


def _staged_code(spec: AppSpec, into: Path) -> list[str]:
    """This project's packages and the models' own, staged for Ray's runtime_env `py_modules`."""
    from groundwork.packages import PackageError, stage_packages
    from serve_apps.build import code_packages

    try:
        return [str(folder) for folder in stage_packages(code_packages(spec), into)]
    except PackageError as exc:
        bad_input(f"{spec.name}: {exc}")


def deploy_with_progress(target, spec: AppSpec, keys: KeyRing, label: str, timeout_s: float = 600) -> None:
    """Deploy, showing each model's state on one live status line until the app runs."""
    with err.status(label) as line:

        def show(app_state: str, states: dict[str, str]) -> None:
            line.update(
                f"deploying {spec.name}: {app_state} — " + ", ".join(f"{n} {s}" for n, s in sorted(states.items()))
            )

        target.deploy(spec, keys=keys, on_status=show, timeout_s=timeout_s)


def deploy(
    spec_path: AppPath,
    address: RayAddress = None,
    host: Annotated[
        str, typer.Option(help="HTTP host for Serve's proxies, if Serve is not running there yet.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=MAX_PORT, help="HTTP port for Serve's proxies, if Serve is not running there yet.")
    ] = 8000,
    timeout: Annotated[
        str, typer.Option("--timeout", "--timeout-s", help="How long to wait for the app to run: 90s, 10m, 1h.")
    ] = "10m",
    insecure_no_ray_auth: InsecureNoRayAuth = False,
) -> None:
    """Deploy (or update) an app on a running Ray cluster. A failed update leaves the previous version serving."""
    from serve_apps.deploy import DeployFailed, prepare_ray_env

    timeout_s = duration_s(timeout, "--timeout", at_most_s=MAX_DEPLOY_WAIT_S)
    address = _resolve(address)
    require_ray_auth(insecure_no_ray_auth, "on the cluster's nodes")
    prepare_ray_env(address)  # before load_app imports the models' modules, which may import Ray
    spec = load_app(spec_path)
    keys = keys_for_host(spec, spec_path, host)
    forget_plaintext_keys()
    launched = _launched_cluster(address)
    if launched is not None:  # a cluster `cluster up` launched from here: the deploy runs on its head
        from .remote import deploy_on_head

        deploy_on_head(launched, spec, keys, host, port, timeout)
        record_served(spec, address, "deployed")
        return
    # Ctrl-C ends the deploy here; Serve may still apply the app (`modelfleet status` shows where it stands).
    with (
        ends_on_interrupt(),
        ray_notices_on_stderr(),
        tempfile.TemporaryDirectory(prefix="modelfleet-code-") as staging,
    ):
        # The replicas run this machine's code, whatever their nodes have installed: Ray ships it with the app.
        target = _connect(address, _staged_code(spec, Path(staging)))
        try:
            from ray import serve

            serve.start(http_options={"host": host, "port": port})  # no-op when Serve already runs there
            listening = target.proxy_host()
            if not keys.enabled and not is_loopback_host(listening):
                bad_input(
                    f"Serve's proxies on {address} already listen on {listening}: refusing to expose {spec.name!r} "
                    f"without API keys; set ingress.keys_file in {spec_path} (see `modelfleet keys create`) or "
                    "MODELFLEET_API_KEYS"
                )
            deploy_with_progress(target, spec, keys, f"deploying {spec.name} to {address}…", timeout_s)
            record_served(spec, address, "deployed")
            out.print(f"deployed {spec.name!r} to {address} (route prefix {spec.route_prefix})")
        except DeployFailed as exc:
            record_served(spec, address, "failed")
            failed(f"deploying {spec.name!r}: {exc}")
        finally:
            target.disconnect()


def status(
    address: RayAddress = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Applications, deployments, replica counts and states on a Ray cluster."""
    from dataclasses import asdict

    from rich.table import Table

    address = _resolve(address)
    launched = _launched_cluster(address)
    if launched is not None:
        from .remote import status_on_head

        status_on_head(launched, as_json)
        return
    with ends_on_interrupt(), ray_notices_on_stderr():
        target = _connect(address)
        try:
            rows = target.status()
        finally:
            target.disconnect()
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in rows]))
        return
    placed = any(r.nodes for r in rows)  # Ray's state API says where replicas run (not on `run`'s Ray)
    table = Table("app", "app status", "deployment", "status", "replicas", *(["nodes"] if placed else []), "message")
    for r in rows:
        replicas = ", ".join(f"{n} {state.lower()}" for state, n in sorted(r.replicas.items())) or "0"
        nodes = [", ".join(f"{address} ({n})" for address, n in sorted(r.nodes.items()))] if placed else []
        table.add_row(r.app, r.app_status, r.deployment, r.status, replicas, *nodes, escape(r.message))
    out.print(table if rows else "no Serve applications on this cluster")
