"""What the server itself saw: request counts and batch sizes from the ingress's /metrics, replicas from Serve.

The generator's numbers are only trusted when the server agrees: a run's
request count is compared with the ingress's own counter, summed over its
replicas by the app's monitor (serve_apps/monitor.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .records import ReplicaPoint

__all__ = ["SETTLE_S", "ReplicaWatcher", "ServerCounts", "scrape"]

SETTLE_S = 1.2  # a little over how often replicas hand their counts to the app's monitor (serve_apps/monitor.py)


@dataclass
class ServerCounts:
    """Counters summed over the ingress replicas: per model, requests (any status), batch rows sum and count."""

    requests: dict[str, float] = field(default_factory=dict)
    batch_rows_sum: dict[str, float] = field(default_factory=dict)
    batch_rows_count: dict[str, float] = field(default_factory=dict)

    def __sub__(self, before: ServerCounts) -> ServerCounts:
        def minus(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
            return {k: v - b.get(k, 0.0) for k, v in a.items()}

        return ServerCounts(
            minus(self.requests, before.requests),
            minus(self.batch_rows_sum, before.batch_rows_sum),
            minus(self.batch_rows_count, before.batch_rows_count),
        )

    def mean_batch_rows(self, model: str) -> float | None:
        count = self.batch_rows_count.get(model, 0.0)
        return round(self.batch_rows_sum.get(model, 0.0) / count, 2) if count else None


def _parse(text: str) -> ServerCounts:
    counts = ServerCounts()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model = sample.labels.get("model", "")
            for name, into in (
                ("modelfleet_requests_total", counts.requests),
                ("modelfleet_batch_rows_sum", counts.batch_rows_sum),
                ("modelfleet_batch_rows_count", counts.batch_rows_count),
            ):
                if sample.name == name:  # summed over versions
                    into[model] = into.get(model, 0.0) + sample.value
    return counts


def scrape(metrics_url: str, headers: dict[str, str], settle_s: float = 0.0, attempts: int = 10) -> ServerCounts | None:
    """The app's counters at `metrics_url` (the app's monitor sums its replicas: one scrape sees them all); None when
    the target has no modelfleet metrics there. `settle_s`: after a load, scrape again this far apart until two
    scrapes agree (each replica hands its counts to the monitor every second: PUSH_S in serve_apps/monitor.py)."""
    with httpx.Client(timeout=10, headers={k: v for k, v in headers.items() if k == "Authorization"}) as client:
        last = None
        for _ in range(attempts):
            try:
                resp = client.get(metrics_url)
            except httpx.HTTPError:
                return None
            if resp.status_code != 200 or "modelfleet_" not in resp.text:
                return None
            counts = _parse(resp.text)
            if not settle_s or (last is not None and counts.requests == last.requests):
                return counts
            last = counts
            time.sleep(settle_s)
        return last


class ReplicaWatcher:
    """Running replicas per deployment over time, from Serve, by a small driver process (Ray stays out of ours)."""

    def __init__(self, ray_address: str, app_name: str, out: Path, interval_s: float = 2.0):
        self.out = out
        with open(f"{out}.log", "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loadtests._replicas", ray_address, app_name, str(out), str(interval_s)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_first(self, timeout_s: float = 60) -> None:
        """Until the first reading is in, so the run's start is covered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.out.exists() and self.out.stat().st_size:
                return
            time.sleep(0.2)

    def stop(self, started: float) -> list[ReplicaPoint]:
        """Readings since `started` (wall clock), as seconds since then."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        points = []
        for line in self.out.read_text().splitlines() if self.out.exists() else []:
            reading = json.loads(line)
            points.append(ReplicaPoint(t_s=round(reading["time"] - started, 2), replicas=reading["replicas"]))
        return [p for p in points if p.t_s >= -5]
