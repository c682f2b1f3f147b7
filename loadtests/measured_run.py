"""One measured run: the generator's numbers, joined with what the server saw (counts, batch sizes, replicas, CPU).

Used by `modelfleet loadtest` for one run, by the tuner for each trial and by the benchmarks for every target.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from .app_process import AppProcess, DeployedApp
from .generator import Progress, generate
from .measure import summarize
from .records import RunConfig, RunRecord
from .scenario import Scenario
from .server_counts import SETTLE_S, ReplicaWatcher, ServerCounts, scrape
from .shapes import Stage

__all__ = ["COUNT_TOLERANCE", "measure_run"]

# The generator's request count and the server's may differ by requests in flight at either end of the run.
COUNT_TOLERANCE = 0.05


def measure_run(
    scenario: Scenario,
    stages: list[Stage],
    config: RunConfig,
    *,
    app: AppProcess | DeployedApp | None = None,
    workers: int = 0,
    report_dir: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    replica_interval_s: float = 2.0,
    stop_on_interrupt: bool = False,
) -> RunRecord:
    """`stop_on_interrupt`: Ctrl-C ends the load and the record covers what ran (`RunRecord.interrupted_at_s`)."""
    metrics_url = scenario.base_url + scenario.metrics_path
    before = scrape(metrics_url, scenario.headers, settle_s=SETTLE_S)
    with tempfile.TemporaryDirectory(prefix="modelfleet-replicas-") as scratch:
        watcher = None
        if app is not None and app.ray_address and app.watch_replicas and config.app:
            watcher = ReplicaWatcher(app.ray_address, config.app, Path(scratch) / "replicas.jsonl", replica_interval_s)
            watcher.wait_first()
        started = None
        try:
            measured = generate(
                scenario,
                stages,
                workers=workers,
                csv_prefix=report_dir / "locust" if report_dir else None,
                server=app.group if app else None,
                on_progress=on_progress,
                stop_on_interrupt=stop_on_interrupt,
            )
            started = measured.started
        finally:
            replicas = watcher.stop(started or 0.0) if watcher else []
    after = scrape(metrics_url, scenario.headers, settle_s=SETTLE_S)
    record = summarize(measured, stages, config)
    record.replicas = replicas
    if before is not None and after is not None:
        _add_server_counts(record, scenario, after - before)
    return record


def _add_server_counts(record: RunRecord, scenario: Scenario, seen: ServerCounts) -> None:
    """Per endpoint, what the ingress counted for its model; a mismatch with the generator's count is a warning."""
    for result, endpoint in zip(record.endpoints, scenario.endpoints, strict=True):
        if endpoint.model is not None and endpoint.model in seen.requests:
            result.server_requests = int(seen.requests[endpoint.model])
            result.mean_batch_rows = seen.mean_batch_rows(endpoint.model)
    counted = [r.server_requests for r in record.endpoints if r.server_requests is not None]
    if len(counted) != len(record.endpoints):
        return  # an endpoint the ingress does not count (not a modelfleet model): no total to compare
    record.server_requests = sum(counted)
    if abs(record.server_requests - record.requests) > COUNT_TOLERANCE * max(record.requests, 1):
        record.warnings.append(
            f"the server counted {record.server_requests} requests and the generator {record.requests}: "
            "other traffic reached these models during the run, or requests were lost"
        )
