"""`modelfleet cluster`: Ray clusters from one YAML: render, launch (local-sim here, `ray up` elsewhere), inspect."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from cluster.spec import Provider
from groundwork import SpecError

from .console import bad_input, err, failed, keys_for_host, load_app, out

app = typer.Typer(help="Ray clusters from one YAML: render, launch, inspect.", no_args_is_help=True)
ClusterPath = Annotated[Path, typer.Argument(help="The cluster spec (YAML).", show_default=False)]


def _load_cluster(path: Path):
    from cluster.spec import load_cluster_spec

    try:
        return load_cluster_spec(path)
    except SpecError as exc:
        bad_input(str(exc))


@app.command("render")
def cluster_render(
    spec_path: ClusterPath,
    provider: Annotated[
        Provider | None, typer.Option(help="Render for this provider (default: the spec's own).")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
    app_path: Annotated[
        Path | None,
        typer.Option("--app", help="kuberay: embed this app (its `build` output) as a RayService's serveConfigV2."),
    ] = None,
) -> None:
    """Render a cluster spec as Ray cluster YAML (for `ray up`) or a KubeRay manifest, checked by Ray's schemas."""
    from cluster.render import TEMPLATED, RenderError, render

    spec = _load_cluster(spec_path)
    target = provider or spec.provider.type
    if target not in TEMPLATED:
        bad_input(
            f"{spec_path}: provider: rendering for {target.value} is not built yet; render for "
            f"{[p.value for p in TEMPLATED]}"
        )
    serve_config = None
    if app_path is not None:
        if target is not Provider.kuberay:
            bad_input(
                "--app: only --provider kuberay embeds an app (as a RayService); deploy it with `modelfleet deploy` "
                "elsewhere"
            )
        from cluster.render import KUBERAY_SERVE_HOST, KUBERAY_TLS_DIR, SERVE_PORT
        from serve_apps.build import serve_config as build_serve_config

        app_spec = load_app(app_path, modules=False)  # the RayService's pods import them, from their image
        refusal = (
            f"--app {app_path}: a RayService's Serve proxies listen on {KUBERAY_SERVE_HOST} in its pods; "
            "refusing to expose models"
        )
        keys = keys_for_host(app_spec, app_path, KUBERAY_SERVE_HOST, refusal)
        try:
            serve_config = build_serve_config(
                app_spec, host=KUBERAY_SERVE_HOST, port=SERVE_PORT, keys=keys, tls_files_in=KUBERAY_TLS_DIR
            )
        except ValueError as exc:
            bad_input(f"{app_path}: {exc}")
    try:
        text = render(spec, target, source=str(spec_path), serve_config=serve_config)
    except ValueError as exc:  # what the spec lacks for this provider (e.g. --provider gcp without project)
        bad_input(f"{spec_path}: {exc} (for --provider {target.value})")
    except RenderError as exc:
        failed(str(exc))
    if output is None:
        out.print(text, end="", markup=False)
    else:
        output.write_text(text)
        err.print(f"wrote {output}")
    target_file = output or "CLUSTER.yaml"
    _print_network_steps(spec, target)
    if target is Provider.kuberay:
        from cluster.render import kuberay_tls_secret

        kubectl = f"kubectl -n {spec.provider.namespace}"
        steps = [
            f"{kubectl} create secret generic {spec.name}-ray-token "
            f"--from-file=token={spec.auth_token_file.replace('~/', '$HOME/')}"
        ]
        tls = app_spec.resolved().ingress.tls if app_path is not None else None
        if tls is not None:  # the app serves HTTPS: its certificate and key reach the pods as a Secret
            steps.append(
                f"{kubectl} create secret tls {kuberay_tls_secret(spec)} --cert={tls.cert_file} --key={tls.key_file}"
            )
        err.print(
            "next steps:\n  " + "\n  ".join([*steps, f"kubectl apply -f {target_file}"]), soft_wrap=True, markup=False
        )
        return
    err.print(
        f"next steps:\n  ray up -y {target_file}        # launch (needs the token file {spec.auth_token_file})\n"
        f"  ray dashboard {target_file}    # the dashboard listens on the head's loopback: this tunnels to it over SSH",
        soft_wrap=True,
        markup=False,
    )


def _print_network_steps(spec, provider) -> None:
    """What the provider's own firewall needs beyond the rendered file (the file says it too, in comments)."""
    from cluster.render import network_steps

    steps = network_steps(spec, provider)
    if steps:
        err.print("network:\n  " + "\n  ".join(steps), soft_wrap=True, markup=False)


def _ray_launcher(verb: str, spec, spec_path: Path, dry_run: bool) -> bool:
    """aws/gcp/azure/onprem: render into the cluster's state dir, then Ray's own launcher (`ray up|down -y`);
    a dry run prints the config and the command and writes nothing.

    False for local-sim, which `up`/`down` run here (and which has nothing to dry-run).
    """
    import subprocess

    from cluster.launch import state_dir
    from cluster.render import render
    from cluster.spec import Provider

    if spec.provider.type is Provider.local_sim:
        if dry_run:
            bad_input(f"{spec_path}: --dry-run is for cloud and on-prem clusters; local-sim runs on this machine")
        return False

    config = state_dir(spec.name) / "cluster.yaml"
    text = render(spec, source=str(spec_path))
    if dry_run:  # writes nothing: the config goes to stdout, what a real run would do to stderr
        out.print(text, end="", markup=False)
        err.print(
            f"dry run: nothing written; `cluster {verb}` would write this config to {config} and run "
            f"`ray {verb} -y {config}`",
            soft_wrap=True,
            markup=False,
        )
        if verb == "up":
            _print_network_steps(spec, spec.provider.type)
        return True
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    command = [str(Path(sys.executable).parent / "ray"), verb, "-y", str(config)]
    from groundwork.ray_env import secure_ray_token

    secure_ray_token(Path(spec.auth_token_file))  # Ray's launcher copies it to every node with the mode it has here
    code = subprocess.call(command)
    if code != 0:
        failed(f"ray {verb} exited {code}; see its output above")
    if verb == "up":
        _print_network_steps(spec, spec.provider.type)
    return True


@app.command("up")
def cluster_up(
    spec_path: ClusterPath,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the rendered config and the command; write and launch nothing.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="local-sim: print the cluster's state (address, serve_url, ...) as JSON.")
    ] = False,
) -> None:
    """Launch a cluster: local-sim here, or render and hand to `ray up` (aws, gcp, azure, onprem)."""
    from cluster.launch import LaunchError, up

    spec = _load_cluster(spec_path)
    if _ray_launcher("up", spec, spec_path, dry_run):
        return
    try:
        with err.status(f"starting {spec.name} (local-sim: Ray's fake_multinode provider, loopback only)…"):
            state = up(spec, str(spec_path))
    except LaunchError as exc:
        failed(str(exc))
    if as_json:
        out.print_json(json.dumps(asdict(state)))
        return
    out.print(f"cluster {spec.name!r} is up (head pid {state.pid})")
    out.print(f"address: {state.address}   (modelfleet deploy APP.yaml --address {state.address})")
    out.print(f"serve_url: {state.serve_url}")
    out.print(f"dashboard: {state.dashboard_url}   (loopback only)")


@app.command("down")
def cluster_down(
    spec_path: ClusterPath,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the rendered config and the command; write and stop nothing.")
    ] = False,
) -> None:
    """Stop a cluster: every process local-sim started, or `ray down` for the others."""
    from cluster.launch import LaunchError, down

    spec = _load_cluster(spec_path)
    if _ray_launcher("down", spec, spec_path, dry_run):
        return
    try:
        state = down(spec.name)
    except LaunchError as exc:
        failed(str(exc))
    out.print(f"cluster {spec.name!r} is down" if state else f"cluster {spec.name!r} was not up")


@app.command("status")
def cluster_status(
    spec_path: ClusterPath, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False
) -> None:
    """Address, serve URL and node counts per pool of a running local-sim cluster."""
    from cluster.launch import LaunchError, load_state, status
    from cluster.spec import Provider

    spec = _load_cluster(spec_path)
    if spec.provider.type is not Provider.local_sim:
        bad_input(
            f"{spec_path}: status reads local-sim clusters for now; for {spec.provider.type.value} use `ray status` on "
            "the head"
        )
    state = load_state(spec.name)
    if state is None:
        failed(f"cluster {spec.name!r} is not up; `modelfleet cluster up {spec_path}` starts it")
    try:
        report = status(state, spec)
    except LaunchError as exc:
        failed(str(exc))
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print(f"{report['name']} ({report['provider']}): address {report['address']}, serve_url {report['serve_url']}")
    for name, pool in report["pools"].items():
        out.print(
            f"  pool {name:<10} nodes {pool['nodes']} (min {pool['min_workers']}, max {pool['max_workers']}), GPUs "
            f"{pool['gpus']}"
        )


@app.command("schema")
def cluster_schema() -> None:
    """Print the JSON schema of the cluster spec."""
    from cluster.spec import ClusterSpec

    out.print_json(json.dumps(ClusterSpec.model_json_schema()))
