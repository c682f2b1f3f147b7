"""The `modelfleet` command: the one place that ties the rooms together.

Exit codes: 0 success, 2 bad input (one line: file, field, fix), 1 a real
component failed (with its cause). No tracebacks for either.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from providers.storage import StorageError
from serve_apps.auth import ENV_VAR as KEYS_ENV_VAR
from serve_apps.auth import KeyRing, KeysConfigError, append_key
from serve_apps.net import is_loopback_host
from serve_apps.spec import AppSpec, ModelSpec, SpecError, check_artifacts_exist, load_app_spec

app = typer.Typer(
    name="modelfleet",
    help="Serve ML models as autoscaling endpoints on Ray Serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)  # URLs and curl lines must stay pasteable

class _ConsoleHandler(logging.Handler):
    """modelfleet's own warnings, one readable line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]{record.levelname.lower()}:[/yellow] {escape(record.getMessage())}", soft_wrap=True)


_log = logging.getLogger("modelfleet")
_log.addHandler(_ConsoleHandler())
_log.setLevel(logging.INFO)
_log.propagate = False

AppPath = Annotated[Path, typer.Argument(help="The app spec (YAML).", show_default=False)]


def _bad_input(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def _failed(message: str) -> NoReturn:
    err.print(f"[red]failed:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def _load(path: Path, *, artifacts: bool = True) -> AppSpec:
    try:
        spec = load_app_spec(path)
        if artifacts:
            check_artifacts_exist(spec, path)
        return spec
    except SpecError as exc:
        _bad_input(str(exc))


def _keys(spec: AppSpec) -> KeyRing:
    try:
        return KeyRing.load(spec.keys_path())
    except KeysConfigError as exc:
        _bad_input(str(exc))


def _keys_for_host(spec: AppSpec, spec_path: Path, host: str, refusal: str | None = None) -> KeyRing:
    """The app's keys; exit 2 if it would listen on `host`, beyond loopback, without any (`refusal` says where)."""
    keys = _keys(spec)
    if not keys.enabled and not is_loopback_host(host):
        _bad_input(
            f"{refusal or f'--host {host}: refusing to expose models beyond this machine'} without API keys; "
            f"set ingress.keys_file in {spec_path} (see `modelfleet keys create`) or MODELFLEET_API_KEYS"
        )
    return keys


def _forget_plaintext_keys() -> None:
    """Once read (and hashed), the plaintext keys leave the environment, so Ray's processes never inherit them."""
    os.environ.pop(KEYS_ENV_VAR, None)


InsecureNoRayAuth = Annotated[
    bool,
    typer.Option(
        "--insecure-no-ray-auth",
        help="Allow RAY_AUTH_MODE=disabled: anyone who reaches Ray's ports (Serve replicas' gRPC included) runs code.",
    ),
]


def _require_ray_auth(insecure: bool, on_what: str) -> None:
    """Exit 2 when Ray's token auth is off, unless the operator said --insecure-no-ray-auth (before Ray starts)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None or mode.lower() == "token":  # unset: Ray 2.60 turns token auth on for the Ray we start or join
        return
    why = (
        f"RAY_AUTH_MODE={mode}: refusing to run Ray without token auth, since every Serve replica runs a gRPC server "
        f"that unpickles request metadata and anyone who reaches it runs code {on_what}"
    )
    if not insecure:
        _bad_input(f"{why}; unset RAY_AUTH_MODE (or set it to token), or pass --insecure-no-ray-auth to accept that")
    _log.warning(f"--insecure-no-ray-auth: Ray runs without token auth; anyone who reaches its ports runs code {on_what}")


@app.command()
def validate(spec_path: AppPath) -> None:
    """Check an app spec (schema and semantics) without starting anything."""
    spec = _load(spec_path)
    _keys(spec)
    out.print(f"{spec_path}: ok — app {spec.name!r}, models: {', '.join(m.name for m in spec.models)}")


@app.command()
def schema() -> None:
    """Print the JSON schema of the app spec (for editors and CI)."""
    out.print_json(json.dumps(AppSpec.model_json_schema()))


@app.command()
def build(
    spec_path: AppPath,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
    host: Annotated[str, typer.Option(help="HTTP host for the Serve proxies; non-loopback exposes the models (needs API keys).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port for the Serve proxies.")] = 8000,
) -> None:
    """Write a Ray Serve config that `serve deploy` accepts."""
    from serve_apps.build import serve_config

    spec = _load(spec_path)
    keys = _keys_for_host(spec, spec_path, host)
    try:
        text = yaml.safe_dump(serve_config(spec, host=host, port=port, keys=keys), sort_keys=False)
    except ValueError as exc:  # what a Serve config cannot express (e.g. asking clients for certificates)
        _bad_input(f"{spec_path}: {exc}")
    if output is None:
        out.print(text, end="", markup=False)
    else:
        output.write_text(text)
        err.print(f"wrote {output}")


def _print_endpoints(spec: AppSpec, base: str) -> None:
    from serve_apps.samples import sample_v1, sample_v2

    def route(model: ModelSpec) -> str:  # a multiplexed family is addressed as family:model_id
        return f"{model.name}:{model.multiplex.example_id or '<model_id>'}" if model.multiplex else model.name

    out.print(f"\n[bold green]serving[/bold green] app {spec.name!r} at {base}   (docs: {base}/docs)")
    for model in spec.models:
        name = route(model)
        out.print(f"  {name:<16} V1 {base}/v1/models/{name}:predict   V2 {base}/v2/models/{name}/infer")
    # The app's first model, unless its sample is too long to read (then the shortest).
    runnable = [m for m in spec.models if not m.multiplex or m.multiplex.example_id] or spec.models
    first = next((m for m in runnable if len(json.dumps(sample_v2(m))) <= 600), None)
    first = first or min(runnable, key=lambda m: len(json.dumps(sample_v2(m))))
    for label, url, body in (
        ("V2", f"{base}/v2/models/{route(first)}/infer", sample_v2(first)),
        ("V1", f"{base}/v1/models/{route(first)}:predict", sample_v1(first)),
    ):
        curl = f"curl -s {url} -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
        out.print(f"\n# try it ({label}):\n{curl}", markup=False, soft_wrap=True)
    out.print("\nCtrl-C stops the server.")


def _prefetch(spec: AppSpec) -> None:
    from serve_apps.runner import prefetch_artifacts

    with Progress(
        TextColumn("fetching [bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err, transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        prefetch_artifacts(spec, progress)


def _check_port_free(host: str, port: int, option: str) -> int:
    """Fail in a second, not after a replica gives up on a busy port; port 0 becomes a free one."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            _bad_input(f"--host {host} {option} {port}: cannot listen there ({exc.strerror}); pick another {option} or stop what uses it")
        return probe.getsockname()[1]


def _connect(address: str):
    from serve_apps.runner import RayTarget

    try:
        return RayTarget.connect(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        _failed(f"cannot connect to Ray at {address}: {str(exc).splitlines()[0]}")


def _deploy_with_progress(target, spec: AppSpec, keys: KeyRing, label: str, timeout_s: float = 600) -> None:
    """Deploy, showing each model's state on one live status line until the app runs."""
    with err.status(label) as line:

        def show(app_state: str, states: dict[str, str]) -> None:
            line.update(f"deploying {spec.name}: {app_state} — " + ", ".join(f"{n} {s}" for n, s in sorted(states.items())))

        target.deploy(spec, keys=keys, on_status=show, timeout_s=timeout_s)


def _interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


@app.command()
def run(
    spec_path: AppPath,
    host: Annotated[str, typer.Option(help="Interface for HTTP; non-loopback exposes the models.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port of the app (its ingress replicas listen on it themselves).")] = 8000,
    proxy_port: Annotated[
        int, typer.Option(help="HTTP port of Ray Serve's proxy, for apps later deployed onto this Ray; 0 picks a free one.")
    ] = 0,
    insecure_no_ray_auth: InsecureNoRayAuth = False,
) -> None:
    """Serve an app on an embedded local Ray until Ctrl-C."""
    from serve_apps.runner import DeployFailed, LocalServer

    _require_ray_auth(insecure_no_ray_auth, "on this machine")
    spec = _load(spec_path)
    keys = _keys_for_host(spec, spec_path, host)
    _forget_plaintext_keys()
    _check_port_free(host, port, "--port")
    if proxy_port == port:
        _bad_input(f"--proxy-port {proxy_port}: the app listens on --port {port}; pick another, or 0 for a free one")
    proxy_port = _check_port_free(host, proxy_port, "--proxy-port")
    try:
        _prefetch(spec)
    except StorageError as exc:
        _failed(f"fetching artifacts: {exc}")

    server = LocalServer(host=host, port=port, proxy_port=proxy_port)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignored SIGINT
    try:
        with err.status("starting Ray (loopback only)…"):
            server.start(pools={m.resources.pool for m in spec.models if m.resources.pool})
        # After ray.init, which installs its own SIGTERM handler: SIGTERM stops as cleanly as Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        _deploy_with_progress(server, spec, keys, f"deploying {spec.name}…")
        display_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        scheme = "https" if spec.ingress.tls else "http"
        _print_endpoints(spec, f"{scheme}://{display_host}:{port}{spec.route_prefix.rstrip('/')}")
        out.print(f"ray: {server.address}   (add apps: modelfleet deploy APP.yaml --address {server.address})")
        out.print(f"proxy: http://{display_host}:{proxy_port}   (Ray Serve's proxy: every app on this Ray, by route prefix)")
        sys.stdout.flush()
        threading.Event().wait()
    except KeyboardInterrupt:
        err.print("\nstopping…")
    except DeployFailed as exc:
        _failed(f"deploying {spec.name!r}: {exc}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the shutdown
        server.stop()
    err.print("stopped.")


@app.command()
def deploy(
    spec_path: AppPath,
    address: Annotated[str, typer.Option(help="Ray cluster address (host:port of the GCS), as `cluster up` prints it.")],
    host: Annotated[str, typer.Option(help="HTTP host for Serve's proxies, if Serve is not running there yet.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port for Serve's proxies, if Serve is not running there yet.")] = 8000,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="How long to wait for the app to run.")] = 600,
    insecure_no_ray_auth: InsecureNoRayAuth = False,
) -> None:
    """Deploy (or update) an app on a running Ray cluster. A failed update leaves the previous version serving."""
    from serve_apps.runner import DeployFailed

    _require_ray_auth(insecure_no_ray_auth, "on the cluster's nodes")
    spec = _load(spec_path)
    keys = _keys_for_host(spec, spec_path, host)
    _forget_plaintext_keys()
    target = _connect(address)
    try:
        from ray import serve

        serve.start(http_options={"host": host, "port": port})  # no-op when Serve already runs there
        _deploy_with_progress(target, spec, keys, f"deploying {spec.name} to {address}…", timeout_s)
        out.print(f"deployed {spec.name!r} to {address} (route prefix {spec.route_prefix})")
    except DeployFailed as exc:
        _failed(f"deploying {spec.name!r}: {exc}")
    finally:
        target.disconnect()


@app.command()
def status(
    address: Annotated[str, typer.Option(help="Ray cluster address; default: RAY_ADDRESS or the local cluster.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Applications, deployments, replica counts and states on a Ray cluster."""
    from dataclasses import asdict

    from rich.table import Table

    target = _connect(address)
    try:
        rows = target.status()
    finally:
        target.disconnect()
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in rows]))
        return
    table = Table("app", "app status", "deployment", "status", "replicas", "message")
    for r in rows:
        replicas = ", ".join(f"{n} {state.lower()}" for state, n in sorted(r.replicas.items())) or "0"
        table.add_row(r.app, r.app_status, r.deployment, r.status, replicas, escape(r.message))
    out.print(table if rows else "no Serve applications on this cluster")


keys_app = typer.Typer(help="API keys: create them; only their hashes are stored.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    file: Annotated[Path, typer.Option("--file", help="Keys file to append to (created if absent).")],
    name: Annotated[str, typer.Option("--name", help="Who holds the key (for audit; not secret).")],
    scope: Annotated[list[str], typer.Option("--scope", help="admin, invoke:* or invoke:<model>; repeatable.")],
) -> None:
    """Create an API key, store its hash and scopes in FILE, print the key once."""
    try:
        key = append_key(file, name, scope)
    except (KeysConfigError, ValueError) as exc:
        _bad_input(str(exc).splitlines()[0])
    err.print(f"stored the hash of key {name!r} ({', '.join(scope)}) in {file}; this is the only time the key is shown:")
    out.print(key, markup=False)


cluster_app = typer.Typer(help="Ray clusters from one YAML: render, launch, inspect.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
ClusterPath = Annotated[Path, typer.Argument(help="The cluster spec (YAML).", show_default=False)]


def _load_cluster(path: Path):
    from cluster.spec import load_cluster_spec

    try:
        return load_cluster_spec(path)
    except SpecError as exc:
        _bad_input(str(exc))


@cluster_app.command("render")
def cluster_render(
    spec_path: ClusterPath,
    provider: Annotated[str | None, typer.Option(help="aws, gcp, azure, onprem or local-sim (default: the spec's own).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
    app_path: Annotated[
        Path | None, typer.Option("--app", help="kuberay: embed this app (its `build` output) as a RayService's serveConfigV2.")
    ] = None,
) -> None:
    """Render a Ray cluster YAML (for `ray up`) or a KubeRay manifest from a cluster spec, checked by Ray's own schemas."""
    from cluster.render import TEMPLATED, RenderError, render
    from cluster.spec import Provider

    spec = _load_cluster(spec_path)
    try:
        target = Provider(provider) if provider else spec.provider.type
    except ValueError:
        _bad_input(f"--provider {provider}: unknown; expected one of {[p.value for p in Provider]}")
    if target not in TEMPLATED:
        _bad_input(f"{spec_path}: provider: rendering for {target.value} is not built yet; render for {[p.value for p in TEMPLATED]}")
    serve_config = None
    if app_path is not None:
        if target is not Provider.kuberay:
            _bad_input(f"--app: only --provider kuberay embeds an app (as a RayService); deploy it with `modelfleet deploy` elsewhere")
        from cluster.render import KUBERAY_SERVE_HOST, KUBERAY_TLS_DIR, SERVE_PORT
        from serve_apps.build import serve_config as build_serve_config

        app_spec = _load(app_path)
        refusal = f"--app {app_path}: a RayService's Serve proxies listen on {KUBERAY_SERVE_HOST} in its pods; refusing to expose models"
        keys = _keys_for_host(app_spec, app_path, KUBERAY_SERVE_HOST, refusal)
        try:
            serve_config = build_serve_config(
                app_spec, host=KUBERAY_SERVE_HOST, port=SERVE_PORT, keys=keys, tls_files_in=KUBERAY_TLS_DIR,
            )
        except ValueError as exc:
            _bad_input(f"{app_path}: {exc}")
    try:
        text = render(spec, target, source=str(spec_path), serve_config=serve_config)
    except ValueError as exc:  # what the spec lacks for this provider (e.g. --provider gcp without project)
        _bad_input(f"{spec_path}: {exc} (for --provider {target.value})")
    except RenderError as exc:
        _failed(str(exc))
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
        steps = [f"{kubectl} create secret generic {spec.name}-ray-token --from-file=token={spec.auth_token_file.replace('~/', '$HOME/')}"]
        tls = app_spec.resolved().ingress.tls if app_path is not None else None
        if tls is not None:  # the app serves HTTPS: its certificate and key reach the pods as a Secret
            steps.append(f"{kubectl} create secret tls {kuberay_tls_secret(spec)} --cert={tls.cert_file} --key={tls.key_file}")
        err.print("next steps:\n  " + "\n  ".join([*steps, f"kubectl apply -f {target_file}"]), soft_wrap=True, markup=False)
        return
    err.print(
        f"next steps:\n  ray up -y {target_file}        # launch (needs the token file {spec.auth_token_file})\n"
        f"  ray dashboard {target_file}    # the dashboard listens on the head's loopback: this tunnels to it over SSH",
        soft_wrap=True, markup=False,
    )


def _print_network_steps(spec, provider) -> None:
    """What the provider's own firewall needs beyond the rendered file (the file says it too, in comments)."""
    from cluster.render import network_steps

    steps = network_steps(spec, provider)
    if steps:
        err.print("network:\n  " + "\n  ".join(steps), soft_wrap=True, markup=False)


def _ray_launcher(verb: str, spec, spec_path: Path, dry_run: bool) -> bool:
    """aws/gcp/azure/onprem: render into the cluster's state dir, then Ray's own launcher (`ray up|down -y`).

    False for local-sim, which `up`/`down` run here (and which has nothing to dry-run).
    """
    import subprocess

    from cluster.launch import state_dir
    from cluster.render import render
    from cluster.spec import Provider

    if spec.provider.type is Provider.local_sim:
        if dry_run:
            _bad_input(f"{spec_path}: --dry-run is for cloud and on-prem clusters; local-sim runs on this machine")
        return False

    home = state_dir(spec.name)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "cluster.yaml"
    text = render(spec, source=str(spec_path))
    config.write_text(text)
    command = [str(Path(sys.executable).parent / "ray"), verb, "-y", str(config)]
    if dry_run:
        out.print(text, end="", markup=False)
        err.print(f"dry run: would run `ray {verb} -y {config}`", soft_wrap=True, markup=False)
        return True
    from serve_apps.runner import secure_ray_token

    secure_ray_token(Path(spec.auth_token_file))  # Ray's launcher copies it to every node with the mode it has here
    code = subprocess.call(command)
    if code != 0:
        _failed(f"ray {verb} exited {code}; see its output above")
    if verb == "up":
        _print_network_steps(spec, spec.provider.type)
    return True


@cluster_app.command("up")
def cluster_up(
    spec_path: ClusterPath,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the rendered config and the command; launch nothing.")] = False,
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
        _failed(str(exc))
    out.print(f"cluster {spec.name!r} is up (head pid {state.pid})")
    out.print(f"address: {state.address}   (modelfleet deploy APP.yaml --address {state.address})")
    out.print(f"serve_url: {state.serve_url}")
    out.print(f"dashboard: {state.dashboard_url}   (loopback only)")


@cluster_app.command("down")
def cluster_down(
    spec_path: ClusterPath,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command; stop nothing.")] = False,
) -> None:
    """Stop a cluster: every process local-sim started, or `ray down` for the others."""
    from cluster.launch import LaunchError, down

    spec = _load_cluster(spec_path)
    if _ray_launcher("down", spec, spec_path, dry_run):
        return
    try:
        state = down(spec.name)
    except LaunchError as exc:
        _failed(str(exc))
    out.print(f"cluster {spec.name!r} is down" if state else f"cluster {spec.name!r} was not up")


@cluster_app.command("status")
def cluster_status(
    spec_path: ClusterPath,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Address, serve URL and node counts per pool of a running local-sim cluster."""
    from cluster.launch import LaunchError, load_state, status
    from cluster.spec import Provider

    spec = _load_cluster(spec_path)
    if spec.provider.type is not Provider.local_sim:
        _bad_input(f"{spec_path}: status reads local-sim clusters for now; for {spec.provider.type.value} use `ray status` on the head")
    state = load_state(spec.name)
    if state is None:
        _failed(f"cluster {spec.name!r} is not up; `modelfleet cluster up {spec_path}` starts it")
    try:
        report = status(state, spec)
    except LaunchError as exc:
        _failed(str(exc))
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print(f"{report['name']} ({report['provider']}): address {report['address']}, serve_url {report['serve_url']}")
    for name, pool in report["pools"].items():
        out.print(f"  pool {name:<10} nodes {pool['nodes']} (min {pool['min_workers']}, max {pool['max_workers']}), GPUs {pool['gpus']}")


@cluster_app.command("schema")
def cluster_schema() -> None:
    """Print the JSON schema of the cluster spec."""
    from cluster.spec import ClusterSpec

    out.print_json(json.dumps(ClusterSpec.model_json_schema()))


from . import cli_load  # noqa: E402,F401  (registers `loadtest` and `tune` on `app`)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
