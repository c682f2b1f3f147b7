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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gevent
import locust  # noqa: F401  (first: gevent patches the standard library before anything else uses it)
from locust import FastHttpUser, LoadTestShape, User, constant, task
from locust.env import Environment
from locust.runners import STATE_STOPPED, WORKER_REPORT_INTERVAL, LocalRunner, MasterRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter

from .app_process import ProcessGroup, free_port
from .measure import Measurements
from .scenario import Endpoint, Scenario
from .shapes import Stage

__all__ = ["Progress", "collect_samples", "generate", "user_classes"]

logging.getLogger("locust").setLevel(logging.WARNING)  # its per-stage INFO lines would break the live progress line
STOP_TIMEOUT_S = 5.0  # users finish the request in flight when a stage lowers the count or the run ends
SAMPLES_KEY = "modelfleet_samples"


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
        path = (
            random.choices(endpoint.paths, cum_weights=self._cum_weights)[0] if self._cum_weights else endpoint.paths[0]
        )
        with self.client.post(
            path, data=next(self._bodies), headers=self.headers, name=endpoint.name, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                # Status and the start of the body: the error type, without per-request details that would split it.
                text = (resp.text or "")[:100].replace("\n", " ") if resp.status_code else str(resp.error)
                resp.failure(f"HTTP {resp.status_code}: {text}")
            elif endpoint.expect and endpoint.expect not in (resp.text or ""):
                resp.failure(f"HTTP 200 without {endpoint.expect}")


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


@dataclass
class Progress:
    """What the live line shows, once a second (Locust's current window: the last seconds)."""

    elapsed_s: float
    users: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    failures: int
    requests: int


def collect_samples(env: Environment, names: list[str], sink: list) -> None:
    index = {name: i for i, name in enumerate(names)}

    def on_request(name: str, response_time: float, exception: BaseException | None = None, **_: object) -> None:
        sink.append((time.time(), response_time, index.get(name, -1), exception is not None))

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
) -> Measurements:
    """Run the stages against the scenario's endpoints and return every measurement; bounded by the last stage's end."""
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
    try:
        measured.started = time.time()
        runner.start_shape()
        deadline = time.monotonic() + stages[-1].until_s + STOP_TIMEOUT_S + 30
        while True:
            gevent.sleep(1.0)
            t_s = time.time() - measured.started
            server_use = server.sample() if server else (None, None)
            measured.users.append((t_s, runner.user_count))
            measured.resources.append((t_s, *server_use, generator.sample()[0] or 0.0))
            total = runner.stats.total
            if on_progress:
                p50, p95, p99 = (total.get_current_response_time_percentile(p) for p in (0.5, 0.95, 0.99))
                on_progress(
                    Progress(
                        t_s, runner.user_count, total.current_rps, p50, p95, p99, total.num_failures, total.num_requests
                    )
                )
            if runner.state == STATE_STOPPED and runner.shape_greenlet is None:
                break
            if time.monotonic() > deadline:
                runner.stop()
                break
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
