"""What every command shares: the two consoles, modelfleet's log lines, and the two ways a command fails.

Exit codes: 0 success, 2 bad input (one line: file, field, fix), 1 a real
component failed (with its cause). No tracebacks for either. `tune` and
`loadtest` add 3 (cli/load.py): they ran, and the result is a no.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from groundwork import SpecError, is_loopback_host
from serve_apps.auth import KeyRing, KeysConfigError
from serve_apps.spec import AppSpec, check_artifacts_exist, check_modules_resolve, load_app_spec

__all__ = [
    "AppPath",
    "app_keys",
    "bad_input",
    "duration_s",
    "ends_on_interrupt",
    "err",
    "ray_notices_on_stderr",
    "failed",
    "keys_for_host",
    "load_app",
    "log",
    "out",
]

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)  # URLs and curl lines must stay pasteable


class LiveLine:
    """One status line on stderr that changes when its owner calls `update`, and only then.

    Rich's `Console.status` redraws from a thread of its own. Under Locust, gevent makes that thread a greenlet, and a
    Ctrl-C that lands while it draws is raised there and dies with it: the load ran on to its end (a test's
    `BackgroundLoad.stop` once waited out its whole 240 s). With no thread, Ctrl-C reaches the load's own loop, which
    reports what ran.
    """

    def __init__(self, text: str):
        from rich.live import Live
        from rich.spinner import Spinner

        self._spinner = Spinner("dots", text)
        self._live = Live(self._spinner, console=err, auto_refresh=False, transient=True)

    def __enter__(self) -> LiveLine:
        self._live.start(refresh=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def update(self, text: str) -> None:
        self._spinner.update(text=text)
        self._live.refresh()


class _ConsoleHandler(logging.Handler):
    """modelfleet's own warnings, one readable line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]{record.levelname.lower()}:[/yellow] {escape(record.getMessage())}", soft_wrap=True)


log = logging.getLogger("modelfleet")
log.addHandler(_ConsoleHandler())
log.setLevel(logging.INFO)
log.propagate = False

AppPath = Annotated[Path, typer.Argument(help="The app spec (YAML).", show_default=False)]


def bad_input(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def duration_s(text: str, option: str, *, at_most_s: float) -> float:
    """Every duration option takes one style: 20s, 2m, 1h, or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        bad_input(f"{option} {text!r}: expected a duration such as 20s, 2m or 1h")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not 1 <= seconds <= at_most_s:
        bad_input(f"{option} {text!r}: pick between 1s and {at_most_s / 3600:g}h")
    return seconds


def failed(message: str) -> NoReturn:
    err.print(f"[red]failed:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def load_app(path: Path, *, artifacts: bool = True, modules: bool = True) -> AppSpec:
    """The app spec, checked as far as this machine can: exit 2 with its one line otherwise.

    `modules`: import each model's `module:` here, as the replicas will (off where this process must not import
    model code, or the replicas import it from elsewhere). `models:/` artifacts are pinned to what the registry
    holds now (cli/registry_refs.py).
    """
    from .registry_refs import pin_registry_refs

    try:
        spec = load_app_spec(path)
        pin_registry_refs(spec, path)
        if artifacts:
            check_artifacts_exist(spec, path)
        if modules:
            check_modules_resolve(spec, path)
        return spec
    except SpecError as exc:
        bad_input(str(exc))


def app_keys(spec: AppSpec) -> KeyRing:
    try:
        return KeyRing.load(spec.keys_path())
    except KeysConfigError as exc:
        bad_input(str(exc))


def keys_for_host(spec: AppSpec, spec_path: Path, host: str, refusal: str | None = None) -> KeyRing:
    """The app's keys; exit 2 if it would listen on `host`, beyond loopback, without any (`refusal` says where)."""
    keys = app_keys(spec)
    if not keys.enabled and not is_loopback_host(host):
        bad_input(
            f"{refusal or f'--host {host}: refusing to expose models beyond this machine'} without API keys; "
            f"set ingress.keys_file in {spec_path} (see `modelfleet keys create`) or MODELFLEET_API_KEYS"
        )
    return keys


# What a shell reports for a command ended by Ctrl-C (128 + SIGINT) or by SIGTERM (128 + SIGTERM).
INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextlib.contextmanager
def ends_on_interrupt() -> Iterator[None]:
    """Ctrl-C or SIGTERM ends the command at once (a shell sees 130 or 143), even while Ray's core holds the GIL.

    A Ray driver can sit in native code for minutes (connecting, waiting on the GCS) without releasing the
    GIL, so no Python handler (KeyboardInterrupt, a waiting thread) would run until it returns. The kernel's
    default action needs no Python: the process ends there and then. Only for commands whose work dies with
    them: a driver's state lives in the cluster, which carries on.
    """
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in INTERRUPTED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def ray_notices_on_stderr() -> Iterator[None]:
    """While this process is a Ray driver, Ray's own notices go to stderr; stdout stays this command's answer.

    A driver prints the cluster's events ("The node ... has been marked dead") on sys.stdout, from a thread of
    its own, at any moment: in the middle of `status --json` a script would parse them as the answer.
    """
    answer = sys.stdout
    out.file = answer  # this command's own output keeps the real stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = answer
        out.file = None  # type: ignore[assignment]  # rich: None means sys.stdout as it is at each print
