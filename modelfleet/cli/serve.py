"""The serving commands: validate, schema, build, run (an embedded Ray), deploy (onto a cluster), status."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
import yaml
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from groundwork import local_rays
from providers.storage import StorageError
from serve_apps.auth import ENV_VAR as KEYS_ENV_VAR
from serve_apps.auth import KeyRing
from serve_apps.spec import AppSpec, ModelSpec

from .console import (
    INTERRUPTED,
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
)

if TYPE_CHECKING:  # serve_apps.build imports Ray
    from serve_apps.build import LocalNeed

__all__ = ["build", "deploy", "run", "schema", "status", "validate"]

# Ray's documented default (`--temp-dir` moves it): replicas' logs, with full tracebacks, are under serve/.
RAY_LOGS = "/tmp/ray/session_latest/logs"
# A deploy that has not converged in this long will not: its cause is in Serve's status, not in more waiting.
MAX_DEPLOY_WAIT_S = 2 * 3600
MAX_PORT = 65535


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
    out.print(f"\nCtrl-C stops the server. Logs (replicas, Ray): {RAY_LOGS}")


def _prefetch(spec: AppSpec) -> None:
    from serve_apps.deploy import prefetch_artifacts

    with Progress(
        TextColumn("fetching [bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

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
            bad_input(
                f"--host {host} {option} {port}: cannot listen there ({exc.strerror}); pick another {option} or stop "
                "what uses it"
            )
        return probe.getsockname()[1]


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


def _connect(address: str):
    from serve_apps.deploy import RayTarget

    try:
        target = RayTarget.connect(address)
        # Serve's driver-side notices ("Connecting to existing Serve app", ...): the status line says more. A filter,
        # not a level, since Serve sets its logger's level again when it starts.
        logging.getLogger("ray.serve").addFilter(lambda record: record.levelno >= logging.ERROR)
        return target
    except (ConnectionError, RuntimeError, ValueError) as exc:
        failed(f"cannot connect to Ray at {address}: {str(exc).splitlines()[0]}")


def _deploy_with_progress(target, spec: AppSpec, keys: KeyRing, label: str, timeout_s: float = 600) -> None:
    """Deploy, showing each model's state on one live status line until the app runs."""
    with err.status(label) as line:

        def show(app_state: str, states: dict[str, str]) -> None:
            line.update(
                f"deploying {spec.name}: {app_state} — " + ", ".join(f"{n} {s}" for n, s in sorted(states.items()))
            )

        target.deploy(spec, keys=keys, on_status=show, timeout_s=timeout_s)


class _StopSignal:
    """Ctrl-C and SIGTERM (what `timeout`, systemd and `docker stop` send) both stop `run` cleanly; remembers which."""

    received: signal.Signals | None = None

    def __call__(self, signum: int, _frame: object) -> NoReturn:
        self.received = signal.Signals(signum)
        raise KeyboardInterrupt


def run(
    spec_path: AppPath,
    host: Annotated[str, typer.Option(help="Interface for HTTP; non-loopback exposes the models.")] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(min=1, max=MAX_PORT, help="HTTP port of the app (its ingress replicas listen on it themselves)."),
    ] = 8000,
    proxy_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=MAX_PORT,
            help="HTTP port of Ray Serve's proxy, for apps later deployed onto this Ray; 0 picks a free one.",
        ),
    ] = 0,
    insecure_no_ray_auth: InsecureNoRayAuth = False,
    ready_file: Annotated[
        Path | None,
        typer.Option(
            "--ready-file",
            help="Once serving, write {app, url, proxy_url, ray_address, pid} here as JSON (removed on exit): "
            "for scripts, instead of reading the printed lines.",
        ),
    ] = None,
) -> None:
    """Serve an app on an embedded local Ray until Ctrl-C."""
    from serve_apps.deploy import DeployFailed, prepare_ray_env
    from serve_apps.local_server import LocalServer

    _require_ray_auth(insecure_no_ray_auth, "on this machine")
    prepare_ray_env()  # before load_app imports the models' modules, which may import Ray
    spec = load_app(spec_path)
    keys = keys_for_host(spec, spec_path, host)
    _forget_plaintext_keys()
    _check_port_free(host, port, "--port")
    if proxy_port == port:
        bad_input(f"--proxy-port {proxy_port}: the app listens on --port {port}; pick another, or 0 for a free one")
    proxy_port = _check_port_free(host, proxy_port, "--proxy-port")
    try:
        _prefetch(spec)
    except StorageError as exc:
        failed(f"fetching artifacts: {exc}")

    server = LocalServer(host=host, port=port, proxy_port=proxy_port)
    stop_signal, ray_gone = _StopSignal(), None
    signal.signal(signal.SIGINT, stop_signal)  # even if our parent ignored SIGINT
    try:
        with err.status("starting Ray (loopback only)…"):
            server.start(pools={m.resources.pool for m in spec.models if m.resources.pool})
        # After ray.init, which installs its own SIGTERM handler: SIGTERM stops as cleanly as Ctrl-C.
        signal.signal(signal.SIGTERM, stop_signal)
        _deploy_with_progress(server, spec, keys, f"deploying {spec.name}…")
        display_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        scheme = "https" if spec.ingress.tls else "http"
        url, proxy_url = (
            f"{scheme}://{display_host}:{port}{spec.route_prefix.rstrip('/')}",
            f"http://{display_host}:{proxy_port}",
        )
        _print_endpoints(spec, url)
        out.print(f"ray: {server.address}   (add apps: modelfleet deploy APP.yaml --address {server.address})")
        out.print(f"proxy: {proxy_url}   (Ray Serve's proxy: every app on this Ray, by route prefix)")
        sys.stdout.flush()
        local_rays.record("run", spec.name, server.address, url)  # `status`, `deploy`, `connect()` find it
        if ready_file is not None:
            ready = {
                "app": spec.name,
                "url": url,
                "proxy_url": proxy_url,
                "ray_address": server.address,
                "pid": os.getpid(),
            }
            _write_atomically(ready_file, json.dumps(ready) + "\n")
        while (ray_gone := server.ray_stopped()) is None:
            time.sleep(0.5)  # watch our own Ray: a dead raylet means nothing is served any more
    except KeyboardInterrupt:
        err.print("\nstopping…")
    except DeployFailed as exc:
        failed(f"deploying {spec.name!r}: {exc}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the shutdown
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)  # no longer serving: a script must not find a stale address
        local_rays.forget()
        with _printed_into(Path(RAY_LOGS) / "modelfleet-run-stop.log"):
            server.stop()
    if ray_gone is not None:
        failed(f"Ray stopped under `run` ({ray_gone}); nothing is served. Ray's logs: {RAY_LOGS}")
    err.print("stopped.")
    if stop_signal.received is not None:
        raise typer.Exit(INTERRUPTED[stop_signal.received])


@contextlib.contextmanager
def _printed_into(path: Path) -> Iterator[None]:
    """What Ray prints while it stops (notices about its own actors going, with print(), past logging) goes here."""
    try:
        sink = path.open("a")
    except OSError:
        sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
    with sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _write_atomically(path: Path, text: str) -> None:
    """Whoever polls for `path` reads it whole or not at all."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


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
    _require_ray_auth(insecure_no_ray_auth, "on the cluster's nodes")
    prepare_ray_env(address)  # before load_app imports the models' modules, which may import Ray
    spec = load_app(spec_path)
    keys = keys_for_host(spec, spec_path, host)
    _forget_plaintext_keys()
    # Ctrl-C ends the deploy here; Serve may still apply the app (`modelfleet status` shows where it stands).
    with ends_on_interrupt():
        target = _connect(address)
        try:
            from ray import serve

            serve.start(http_options={"host": host, "port": port})  # no-op when Serve already runs there
            _deploy_with_progress(target, spec, keys, f"deploying {spec.name} to {address}…", timeout_s)
            out.print(f"deployed {spec.name!r} to {address} (route prefix {spec.route_prefix})")
        except DeployFailed as exc:
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

    with ends_on_interrupt():
        target = _connect(_resolve(address))
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
