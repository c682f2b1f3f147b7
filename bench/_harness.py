"""What the benchmarks share: targets as subprocesses, their CPU and niceness, results files, tables.

The load itself is loadtests' (bench/_load.py), kept out of this module: it
patches the process with gevent, which bench.faults never wants.
Measurement is kept apart from reporting: runs return dataclass records;
`print_table` and `write_results` only render them. Every target runs in a
session of its own, so its whole process tree (Ray's workers included) can be
found, measured and stopped by pid, whatever happens to the benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import httpx
import psutil
import yaml
from rich.console import Console
from rich.table import Table

from groundwork.processes import StartedProcess, session_processes, stop_process_tree

from ._payloads import READY_PATH

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
LOGS = RESULTS / "logs"
# Piped output (make, tee) would otherwise wrap the tables at 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


class TargetFailed(RuntimeError):
    """A target did not start or answered wrongly; the message names it and its log."""


def interrupt_on_signals() -> None:
    """SIGINT and SIGTERM unwind like Ctrl-C, so every `finally` stops its subprocesses.

    SIGINT too because a shell starting us in the background (`&`) leaves it ignored.
    """

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


@contextlib.contextmanager
def exit_on_failure(what: str = "", failures: tuple[type[Exception], ...] = (TargetFailed,)) -> Iterator[None]:
    """A benchmark's target failing prints one line and exits 1; Ctrl-C exits 130 (each target's context manager
    has stopped it on the way out)."""
    try:
        yield
    except failures as exc:
        console.print(f"[red]{what + ' ' if what else ''}failed:[/red] {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted; the servers were stopped")
        sys.exit(130)


@dataclass
class Target:
    name: str
    argv: list[str]
    port: int
    ready_path: str = READY_PATH
    startup_timeout_s: float = 120
    env: dict[str, str | None] = field(default_factory=dict)  # None removes the variable

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _role(proc: psutil.Process, leader: int) -> str:
    """Ray names its workers `ray::<Class>...`; other processes go by name."""
    if proc.pid == leader:
        return "main"
    cmdline = proc.cmdline()
    return cmdline[0] if cmdline and cmdline[0].startswith("ray::") else proc.name()


def _name(proc: psutil.Process) -> str:
    try:
        return _role(proc, -1)
    except psutil.Error:
        return str(proc.pid)


class Server(StartedProcess):
    """A target as a subprocess: started, probed until ready, and always stopped (use it as a context manager)."""

    def __init__(self, target: Target):
        self.target = target
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.log_path = LOGS / f"{target.name}.log"

    @property
    def url(self) -> str:
        return self.target.url

    def start(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        env = os.environ.copy()
        for key, value in self.target.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.target.argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.target.startup_timeout_s
        with httpx.Client(timeout=5) as client:
            while True:
                if self.proc.poll() is not None:
                    raise TargetFailed(
                        f"{self.target.name} exited ({self.proc.returncode}) while starting:\n{self.log_tail()}"
                    )
                try:
                    if client.get(self.url + self.target.ready_path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TargetFailed(
                        f"{self.target.name} not ready after {self.target.startup_timeout_s:.0f}s:\n{self.log_tail()}"
                    )
                time.sleep(0.5)

    def settle(self, idle_cores: float = 0.15, timeout_s: float = 60) -> float:
        """Wait until the target's processes are nearly idle (Ray's agents keep busy for a while after start-up).

        A run that starts while they still are measures them too. Returns the cores in use when it stopped waiting.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with CpuSampler(self.roles(), interval_s=1.0) as sampler:
                time.sleep(2.0)
            busy = sum(sampler.cores().values())
            if busy <= idle_cores or time.monotonic() > deadline:
                return busy
            time.sleep(1.0)

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log_path.relative_to(REPO)})"

    def processes(self) -> list[psutil.Process]:
        """The target's processes: its session (Ray's workers stay in it), plus descendants that left it."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return session_processes(self.proc.pid)

    def roles(self) -> dict[int, str]:
        roles = {}
        for proc in self.processes():
            try:
                roles[proc.pid] = _role(proc, self.proc.pid)
            except psutil.Error:
                continue
        return roles

    def niceness(self) -> dict[str, int]:
        """Niceness per role; where one role spans processes with different values, the highest."""
        nice: dict[str, int] = {}
        for pid, role in self.roles().items():
            try:
                nice[role] = max(nice.get(role, -20), psutil.Process(pid).nice())
            except psutil.Error:
                continue
        return nice

    def stop(self, grace_s: float = 60) -> None:
        """SIGINT, then SIGTERM, then SIGKILL, each after a wait; then whatever of its tree outlived it."""
        if self.proc is None:
            return
        # Bounded in time, so Ctrl-C (or SIGTERM) waits for it rather than leave Ray running.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            names = {p.pid: _name(p) for p in self.processes()}  # before they go: the stragglers' names for the report

            def slow(sig: signal.Signals, wait_s: float) -> None:
                console.print(f"[yellow]{self.target.name} still running {wait_s:.0f}s after {sig.name}[/yellow]")

            leftovers = stop_process_tree(self.proc, signal.SIGINT, grace_s, on_slow=slow)
            if leftovers:
                ended = ", ".join(sorted({names.get(p.pid, str(p.pid)) for p in leftovers}))
                console.print(
                    f"[yellow]{self.target.name}: ended {len(leftovers)} process(es) that outlived it: {ended}[/yellow]"
                )
            self.exit_code = self.proc.returncode
            if self.exit_code not in (0, 130, -signal.SIGINT):  # stopped by our Ctrl-C, as asked
                console.print(
                    f"[yellow]{self.target.name} exited with {self.exit_code}; see "
                    f"{self.log_path.relative_to(REPO)}[/yellow]"
                )
        finally:
            self.proc = None
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class CpuSampler:
    """CPU use (in cores) and resident memory of some processes, read once a second by a thread while a run is in
    flight."""

    def __init__(self, roles: dict[int, str], interval_s: float = 1.0):
        self.roles = roles
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[int, float]]] = []
        self.rss_mb: list[tuple[float, dict[int, float]]] = []
        self._procs = {}
        for pid in roles:
            try:
                self._procs[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        row, rss = {}, {}
        for pid, proc in self._procs.items():
            try:
                times = proc.cpu_times()
                row[pid] = times.user + times.system
                rss[pid] = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
        now = time.monotonic()
        self.samples.append((now, row))
        self.rss_mb.append((now, rss))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def cores(self, skip_s: float = 0.0, until_s: float | None = None) -> dict[str, float]:
        """Mean cores per role over [skip_s, until_s] after the start: leaves start-up and wind-down out."""
        t0 = self.samples[0][0]
        window = [s for s in self.samples if s[0] >= t0 + skip_s and (until_s is None or s[0] <= t0 + until_s)]
        use: dict[str, float] = {}
        for pid, role in self.roles.items():
            rows = [(t, row[pid]) for t, row in window if pid in row]
            if len(rows) >= 2:
                use[role] = use.get(role, 0.0) + (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0])
        return dict(sorted(use.items(), key=lambda kv: -kv[1]))


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    versions = {}
    for package in ("ray", "fastapi", "uvicorn", "locust", "torch", "sentence-transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "gpu": "yes" if Path("/dev/nvidia0").exists() else "none",
        "versions": versions,
    }


def write_results(name: str, payload: dict) -> Path:
    """bench/results/<name>.json: the records plus when and where they were measured."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: object) -> object:
    return asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def spec_variant(
    base: Path, out: Path, edit: Callable[[dict], None] = lambda _: None, relative_to: Path | None = None
) -> Path:
    """A copy of the app spec `base`, changed by `edit`, written to `out` with its relative artifact paths made
    absolute (they are relative to `relative_to`, by default the spec's own folder)."""
    spec = yaml.safe_load(base.read_text())
    for model in spec["models"]:
        artifact = model.get("artifact") or {}
        uri = artifact.get("uri", "")
        if uri and "://" not in uri and not uri.startswith("/"):
            artifact["uri"] = str(((relative_to or base.parent) / uri).resolve())
    edit(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out
