"""`modelfleet cluster`: Ray clusters from one YAML: render, launch (local-sim here, `ray up` elsewhere), inspect."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from cluster.spec import Provider
from groundwork import SpecError

from .console import bad_input, err, failed, keys_for_host, load_app, out
from .events import audit

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


def _dry_run(verb: str, spec, spec_path: Path) -> None:
    """What `cluster up|down` would write and run, written to stdout and stderr; nothing is written or launched."""
    from cluster.launch import state_dir
    from cluster.render import render

    if spec.provider.type is Provider.local_sim:
        bad_input(f"{spec_path}: --dry-run is for cloud and on-prem clusters; local-sim runs on this machine")

    config = state_dir(spec.name) / "cluster.yaml"
    out.print(render(spec, source=str(spec_path)), end="", markup=False)
    err.print(
        f"dry run: nothing written; `cluster {verb}` would write this config to {config} and run "
        f"`ray {verb} -y {config}`",
        soft_wrap=True,
        markup=False,
    )
    if verb == "up":
        _print_network_steps(spec, spec.provider.type)


def _print_reach(report: dict) -> None:
    out.print(f"address: {report['address']}   (modelfleet deploy APP.yaml --address {report['address']})")
    out.print(f"serve_url: {report['serve_url']}")


@app.command("up")
def cluster_up(
    spec_path: ClusterPath,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the rendered config and the command; write and launch nothing.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the cluster's state (address, serve_url, ...) as JSON.")
    ] = False,
) -> None:
    """Launch a cluster: local-sim here; aws, gcp, azure and onprem through Ray's launcher (`ray up`), over SSH."""
    from cluster.launch import LaunchError, up

    spec = _load_cluster(spec_path)
    local_sim = spec.provider.type is Provider.local_sim
    if dry_run:
        _dry_run("up", spec, spec_path)
        return
    if not local_sim:
        _remote_up(spec, spec_path, as_json)
        return
    try:
        with err.status(f"starting {spec.name} (local-sim: Ray's fake_multinode provider, loopback only)…"):
            state = up(spec, str(spec_path))
    except LaunchError as exc:
        audit("cluster.up", f"cluster:{spec.name}", "failed", {"provider": spec.provider.type.value})
        failed(str(exc))
    audit(
        "cluster.up", f"cluster:{spec.name}", details={"provider": spec.provider.type.value, "address": state.address}
    )
    if as_json:
        out.print_json(json.dumps(asdict(state)))
        return
    out.print(f"cluster {spec.name!r} is up (head pid {state.pid})")
    _print_reach(asdict(state))
    out.print(f"dashboard: {state.dashboard_url}   (loopback only)")


def _remote_up(spec, spec_path: Path, as_json: bool) -> None:
    from cluster import remote
    from cluster.launch import LaunchError

    try:
        with err.status(f"starting {spec.name} ({spec.provider.type.value}): `ray up` over SSH…"):
            cluster = remote.up(spec, str(spec_path))
    except LaunchError as exc:
        audit("cluster.up", f"cluster:{spec.name}", "failed", {"provider": spec.provider.type.value})
        failed(str(exc))
    audit("cluster.up", f"cluster:{spec.name}", details={"provider": spec.provider.type.value, "head": cluster.head})
    _print_network_steps(spec, spec.provider.type)
    if as_json:
        out.print_json(json.dumps(asdict(cluster)))
        return
    out.print(f"cluster {spec.name!r} is up (head {cluster.head}; `ray up` log: {cluster.log})")
    out.print(f"every host runs {cluster.versions}")
    _print_reach(asdict(cluster))
    out.print(
        f"reach: deploy and status run on the head over SSH, through Ray's launcher (`ray exec {cluster.config}`)"
    )


@app.command("down")
def cluster_down(
    spec_path: ClusterPath,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the rendered config and the command; write and stop nothing.")
    ] = False,
) -> None:
    """Stop a cluster: every process local-sim started, or Ray on every node of the others (`ray down`)."""
    from cluster import remote
    from cluster.launch import LaunchError, down

    spec = _load_cluster(spec_path)
    local_sim = spec.provider.type is Provider.local_sim
    if dry_run:
        _dry_run("down", spec, spec_path)
        return
    try:
        with err.status(f"stopping {spec.name}…"):
            state = down(spec.name) if local_sim else remote.down(spec.name)
    except LaunchError as exc:
        audit("cluster.down", f"cluster:{spec.name}", "failed")
        failed(str(exc))
    if state:
        audit("cluster.down", f"cluster:{spec.name}")
    out.print(f"cluster {spec.name!r} is down" if state else f"cluster {spec.name!r} was not up")


@app.command("status")
def cluster_status(
    spec_path: ClusterPath, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False
) -> None:
    """Address, serve URL and the nodes of each pool of a running cluster."""
    from cluster import remote
    from cluster.launch import LaunchError, load_state, status

    spec = _load_cluster(spec_path)
    try:
        if spec.provider.type is Provider.local_sim:
            state = load_state(spec.name)
            if state is None:
                failed(f"cluster {spec.name!r} is not up; `modelfleet cluster up {spec_path}` starts it")
            report = status(state, spec)
        else:
            cluster = remote.load(spec.name)
            if cluster is None:
                failed(f"cluster {spec.name!r} was not launched from this machine; `modelfleet cluster up {spec_path}`")
            report = remote.status(cluster, spec)
    except LaunchError as exc:
        failed(str(exc))
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print(f"{report['name']} ({report['provider']}): address {report['address']}, serve_url {report['serve_url']}")
    for name, pool in report["pools"].items():
        hosts = f" [{', '.join(pool['hosts'])}]" if pool.get("hosts") else ""
        out.print(
            f"  pool {name:<10} nodes {pool['nodes']}{hosts} (min {pool['min_workers']}, max {pool['max_workers']}), "
            f"GPUs {pool['gpus']}"
        )


@app.command("schema")
def cluster_schema() -> None:
    """Print the JSON schema of the cluster spec."""
    from cluster.spec import ClusterSpec

    out.print_json(json.dumps(ClusterSpec.model_json_schema()))
