"""The load generator: Locust as a library (`Environment`, a local or master runner), driven through stages.

Importing this module imports Locust, which monkey-patches the process with
gevent; Ray must never be imported into the same process (the CLI's
`loadtest` and `tune` never do: the app under test runs in a `modelfleet run`
subprocess). Every request's own response time is kept, so every record is
computed from the same raw samples, whatever the window.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import locust  # noqa: F401  (first: gevent patches the standard library before anything else uses it)
from locust import FastHttpUser, LoadTestShape, User, constant, task
from locust.contrib.fasthttp import HTTPConnectionClosed
from locust.env import Environment
from locust.runners import STATE_STOPPED, WORKER_REPORT_INTERVAL, LocalRunner, MasterRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter

from .app_process import ProcessGroup, free_port
from .measure import LiveTally, Measurements, Progress
from .scenario import Endpoint, Scenario
from .shapes import Stage

__all__ = ["Progress", "RequestFailed", "collect_samples", "failure_kind", "generate", "user_classes"]

# Ctrl-C arrives in gevent's hub, which prints "KeyboardInterrupt" and a timestamp before passing it to the
# main greenlet; the command says "interrupted" itself. (It still reaches the main greenlet: SYSTEM_ERROR.)
gevent.get_hub().NOT_ERROR += (KeyboardInterrupt,)
logging.getLogger("locust").setLevel(logging.WARNING)  # its per-stage INFO lines would break the live progress line
STOP_TIMEOUT_S = 5.0  # users finish the request in flight when a stage lowers the count or the run ends
SAMPLES_KEY = "modelfleet_samples"
PATH_KEY = "modelfleet_path"  # which of an endpoint's paths a request went to (a family's model id)

# Exception (the first in its class's MRO that is listed) -> the kind of failure it counts as.
_FAILURE_KINDS: dict[type[BaseException], str] = {
    ConnectionRefusedError: "connection refused",
    ConnectionResetError: "connection reset",
    BrokenPipeError: "connection reset",
    HTTPConnectionClosed: "connection closed",
    TimeoutError: "timeout",
    gevent.Timeout: "timeout",
    ssl.SSLError: "TLS error",
    socket.gaierror: "host not found",
    OSError: "network error",
}


def failure_kind(error: BaseException | None) -> str:
    """What a request that got no HTTP answer counts as: "connection refused", "timeout", ..."""
    if error is None:
        return "no answer"
    return next((_FAILURE_KINDS[c] for c in type(error).__mro__ if c in _FAILURE_KINDS), type(error).__name__)


class RequestFailed(Exception):
    """A failed request, as Locust records it: the kind (what the failures are counted by) and the detail."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind

    def __repr__(self) -> str:  # Locust's errors table shows repr(): the message, without the class around it
        return str(self)


class _EndpointUser(FastHttpUser):
    """POST the endpoint's bodies in turn, closed loop (no wait): one user is one request in flight."""

    abstract = True
    endpoint: Endpoint
    headers: dict[str, str] = {}
    wait_time = constant(0)
    network_timeout = 120.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self._bodies = itertools.cycle(random.sample(self.endpoint.bodies, len(self.endpoint.bodies)))
        weights = self.endpoint.path_weights
        self._cum_weights = list(itertools.accumulate(weights)) if weights else None

    @task
    def call(self) -> None:
        endpoint = self.endpoint
        path = random.choices(range(len(endpoint.paths)), cum_weights=self._cum_weights)[0] if self._cum_weights else 0
        with self.client.post(
            endpoint.paths[path],
            data=next(self._bodies),
            headers=self.headers,
            name=endpoint.name,
            catch_response=True,
            context={PATH_KEY: path},
        ) as resp:
            if not resp.status_code:  # no HTTP answer at all
                resp.failure(RequestFailed(failure_kind(resp.error), str(resp.error or "")))
            elif resp.status_code != 200:
                # Status and the start of the body: the error type, without per-request details that would split it.
                resp.failure(RequestFailed(f"HTTP {resp.status_code}", (resp.text or "")[:100].replace("\n", " ")))
            elif endpoint.expect and endpoint.expect not in (resp.text or ""):
                resp.failure(RequestFailed("unexpected answer", f"HTTP 200 without {endpoint.expect}"))


def user_classes(scenario: Scenario) -> list[type[User]]:
    """One small user class per endpoint; Locust splits users among them by weight."""
    smallest = min(e.weight for e in scenario.endpoints)
    return [
        type(
            f"Endpoint{i}",
            (_EndpointUser,),
            {
                "endpoint": e,
                "headers": scenario.headers,
                "host": scenario.base_url,
                "weight": max(1, round(10 * e.weight / smallest)),
            },
        )
        for i, e in enumerate(scenario.endpoints)
    ]


class _StagedShape(LoadTestShape):
    def __init__(self, stages: list[Stage]):
        super().__init__()
        self.stages = stages

    def tick(self) -> tuple[int, float] | None:
        now = self.get_run_time()
        stage = next((s for s in self.stages if now < s.until_s), None)
        return (stage.users, stage.spawn_rate) if stage else None


def collect_samples(env: Environment, names: list[str], sink: list) -> None:
    """Append (end time, ms, endpoint index, failure kind or None, path index) for every request."""
    index = {name: i for i, name in enumerate(names)}

    def on_request(
        name: str,
        response_time: float,
        exception: BaseException | None = None,
        context: dict | None = None,
        **_: object,
    ) -> None:
        kind = None if exception is None else getattr(exception, "kind", None) or failure_kind(exception)
        sink.append((time.time(), response_time, index.get(name, -1), kind, (context or {}).get(PATH_KEY, 0)))

    env.events.request.add_listener(on_request)


def _start_workers(
    env: Environment, scenario: Scenario, count: int, runner: MasterRunner, port: int
) -> list[subprocess.Popen]:
    """Locust worker processes on this machine, for when one generator process is the bottleneck."""
    spec = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    spec.write(scenario.model_dump_json())
    spec.close()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "loadtests._worker", str(port), spec.name],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(count)
    ]
    try:
        deadline = time.monotonic() + 60
        while runner.worker_count < count:
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                _stop_workers(workers)
                raise RuntimeError(f"{runner.worker_count} of {count} Locust workers connected; see their output above")
            gevent.sleep(0.2)
    finally:
        os.unlink(spec.name)  # each worker has read it once it connected (or it failed)
    return workers


def _stop_workers(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def generate(
    scenario: Scenario,
    stages: list[Stage],
    *,
    workers: int = 0,
    csv_prefix: Path | None = None,
    server: ProcessGroup | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    stop_on_interrupt: bool = False,
) -> Measurements:
    """Run the stages against the scenario's endpoints and return every measurement; bounded by the last stage's end.

    `stop_on_interrupt`: Ctrl-C ends the run there and what was measured is returned (`interrupted_at_s` set), as
    Locust and k6 report an interrupted run; a second Ctrl-C, or without it the first, raises KeyboardInterrupt."""
    env = Environment(
        user_classes=user_classes(scenario), shape_class=_StagedShape(stages), stop_timeout=STOP_TIMEOUT_S
    )
    names = [e.name for e in scenario.endpoints]
    measured = Measurements(started=time.time(), endpoint_names=names)
    worker_procs: list[subprocess.Popen] = []
    runner: MasterRunner | LocalRunner
    if workers:
        port = free_port()
        runner = env.create_master_runner("127.0.0.1", port)  # loopback only: never listen beyond this machine
        env.events.worker_report.add_listener(
            lambda client_id, data: measured.samples.extend(data.get(SAMPLES_KEY, ()))
        )
        worker_procs = _start_workers(env, scenario, workers, runner, port)
    else:
        runner = env.create_local_runner()
        collect_samples(env, names, measured.samples)
    writer = StatsCSVFileWriter(env, PERCENTILES_TO_REPORT, str(csv_prefix), full_history=True) if csv_prefix else None
    writer_greenlet = gevent.spawn(writer.stats_writer) if writer else None
    generator = ProcessGroup([os.getpid(), *(w.pid for w in worker_procs)])
    tally = LiveTally(measured.samples, stages[-1].until_s, lag_s=WORKER_REPORT_INTERVAL if workers else 0.0)
    try:
        measured.started = time.time()
        runner.start_shape()
        deadline = time.monotonic() + stages[-1].until_s + STOP_TIMEOUT_S + 30
        try:
            while True:
                gevent.sleep(1.0)
                t_s = time.time() - measured.started
                server_use = server.sample() if server else (None, None)
                measured.users.append((t_s, runner.user_count))
                measured.resources.append((t_s, *server_use, generator.sample()[0] or 0.0))
                if on_progress:
                    on_progress(tally.progress(time.time(), min(t_s, tally.total_s), runner.user_count))
                if runner.state == STATE_STOPPED and runner.shape_greenlet is None:
                    break
                if time.monotonic() > deadline:
                    runner.stop()
                    break
        except KeyboardInterrupt:
            if not stop_on_interrupt:
                raise
            measured.interrupted_at_s = round(time.time() - measured.started, 2)
            runner.stop()
        if worker_procs:
            gevent.sleep(WORKER_REPORT_INTERVAL + 1)  # the workers' last samples arrive with their next report
        if writer_greenlet:
            gevent.sleep(1.2)  # one more pass of Locust's CSV writer, with the final numbers
    finally:
        measured.errors = {f"{e.name}: {e.error}": e.occurrences for e in runner.stats.errors.values()}
        runner.quit()
        _stop_workers(worker_procs)
        if writer is not None and writer_greenlet is not None:
            writer_greenlet.kill()
            writer.close_files()
    return measured
