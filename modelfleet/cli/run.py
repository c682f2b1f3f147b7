"""`modelfleet run`: an app on an embedded, loopback-only Ray until Ctrl-C or SIGTERM, watching that Ray."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import psutil
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from groundwork import local_rays
from groundwork.processes import adopt_orphans, end_processes
from providers.storage import StorageError
from serve_apps.spec import AppSpec, ModelSpec

from .console import INTERRUPTED, AppPath, bad_input, err, failed, keys_for_host, load_app, log, out
from .registry_refs import record_served
from .serve import MAX_PORT, InsecureNoRayAuth, deploy_with_progress, forget_plaintext_keys, require_ray_auth

if TYPE_CHECKING:
    from serve_apps.local_server import LocalServer

__all__ = ["RAY_LOGS", "run"]

# Ray's documented default (`--temp-dir` moves it): replicas' logs, with full tracebacks, are under serve/.
RAY_LOGS = "/tmp/ray/session_latest/logs"
STOP_BOUND_S = 8.0  # Ctrl-C or SIGTERM to stopped, within Docker's 10 s grace period, whatever Ray does


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

    from groundwork.processes import free_port

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            bad_input(
                f"--host {host} {option} {port}: cannot listen there ({exc.strerror}); pick another {option} or stop "
                "what uses it"
            )
    return port or free_port(host)  # not the kernel's pick: Ray, starting before the proxy, could take that first


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

    require_ray_auth(insecure_no_ray_auth, "on this machine")
    prepare_ray_env()  # before load_app imports the models' modules, which may import Ray
    spec = load_app(spec_path)
    keys = keys_for_host(spec, spec_path, host)
    forget_plaintext_keys()
    _check_port_free(host, port, "--port")
    if proxy_port == port:
        bad_input(f"--proxy-port {proxy_port}: the app listens on --port {port}; pick another, or 0 for a free one")
    proxy_port = _check_port_free(host, proxy_port, "--proxy-port")
    try:
        _prefetch(spec)
    except StorageError as exc:
        failed(f"fetching artifacts: {exc}")

    # Ray's agents outlive a raylet stopped while it was still starting them: as their subreaper, `run` still sees
    # them as its descendants when it stops (_stop_ray).
    adopt_orphans()
    server = LocalServer(host=host, port=port, proxy_port=proxy_port)
    stop_signal, ray_gone, target = _StopSignal(), None, None
    signal.signal(signal.SIGINT, stop_signal)  # even if our parent ignored SIGINT
    try:
        with err.status("starting Ray (loopback only)…"):
            server.start(pools={m.resources.pool for m in spec.models if m.resources.pool})
        # After ray.init, which installs its own SIGTERM handler: SIGTERM stops as cleanly as Ctrl-C.
        signal.signal(signal.SIGTERM, stop_signal)
        deploy_with_progress(server, spec, keys, f"deploying {spec.name}…")
        display_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        scheme = "https" if spec.ingress.tls else "http"
        url, proxy_url = (
            f"{scheme}://{display_host}:{port}{spec.route_prefix.rstrip('/')}",
            f"http://{display_host}:{proxy_port}",
        )
        _print_endpoints(spec, url)
        _note_idle_cores(spec)
        out.print(f"ray: {server.address}   (add apps: modelfleet deploy APP.yaml --address {server.address})")
        out.print(f"proxy: {proxy_url}   (Ray Serve's proxy: every app on this Ray, by route prefix)")
        sys.stdout.flush()
        local_rays.record("run", spec.name, server.address, url)  # `status`, `deploy`, `connect()` find it
        record_served(spec, target := server.address, "deployed")  # the Ray address, as `deploy` and rollouts say
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
        if target is not None:
            record_served(spec, target, "stopped")
        if not _stop_ray(server):
            err.print(f"stopped (Ray did not stop within {STOP_BOUND_S:g}s: its processes were ended)")
            sys.stdout.flush()
            sys.stderr.flush()
            # Ray's atexit shutdown would wait on what hung: leave without it.
            os._exit(INTERRUPTED.get(stop_signal.received or signal.SIGINT, 1) if ray_gone is None else 1)
    if ray_gone is not None:
        failed(f"Ray stopped under `run` ({ray_gone}); nothing is served. Ray's logs: {RAY_LOGS}")
    err.print("stopped.")
    if stop_signal.received is not None:
        raise typer.Exit(INTERRUPTED[stop_signal.received])


def _stop_ray(server: LocalServer) -> bool:
    """Stop Ray as Ray stops (Serve first, bounded), within STOP_BOUND_S; then end by pid whatever process this
    `run` started that outlived it: a stop that came while ray.init was still starting things leaves Ray's agents
    behind, and Ray's own shutdown can hang. False if it hung."""
    started = psutil.Process().children(recursive=True)  # Ray's processes: all of them this process's descendants
    with _printed_into(Path(RAY_LOGS) / "modelfleet-run-stop.log"):
        stopper = threading.Thread(target=server.stop, name="ray-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_BOUND_S)
    hung = stopper.is_alive()
    end_processes(started, grace_s=0 if hung else 1)  # a hung Ray is past waiting for
    for _ in range(3):  # what was still being started when we looked, orphaned to us since (adopt_orphans)
        late = psutil.Process().children(recursive=True)
        if not late:
            break
        end_processes(late, grace_s=1)
    return not hung


def _note_idle_cores(spec: AppSpec) -> None:
    """Say so when a torch model could use more of this machine's cores than its spec gives it: Ray starts each
    replica with floor(num_cpus) torch threads (OMP_NUM_THREADS), so `num_cpus: 1` on a 2-core box computes a
    batch on one core while the other idles."""
    cores = os.cpu_count() or 1
    if os.environ.get("OMP_NUM_THREADS"):
        return  # the user chose the threads
    for model in spec.models:
        # A batched model that reserves whole cores is one whose speed is its threads (not a light one sharing a core).
        if model.embedded or not model.batching or model.resources.num_cpus < 1 or model.format.value == "builtin":
            continue
        threads = max(1, int(model.resources.num_cpus))
        if threads * model.autoscaling.max_replicas < cores:
            log.info(
                f"{model.name}: at most {model.autoscaling.max_replicas} replica(s) of {threads} torch thread(s) "
                f"(resources.num_cpus: {model.resources.num_cpus:g}) on this {cores}-core machine; raise num_cpus "
                "or max_replicas to use the rest"
            )


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
