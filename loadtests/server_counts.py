"""What the server itself saw: request counts and batch sizes from the ingress's /metrics, replicas from Serve.

The generator's numbers are only trusted when the server agrees: a run's
request count is compared with the ingress's own counter. Each ingress
replica serves its own /metrics (and labels itself), so the scraper keeps
asking until it has heard from every replica.
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

__all__ = ["ReplicaWatcher", "ServerCounts", "scrape"]


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


def _parse(text: str) -> tuple[str | None, ServerCounts]:
    replica, counts = None, ServerCounts()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model = sample.labels.get("model", "")
            if sample.name == "modelfleet_ingress_replica":
                replica = sample.labels.get("replica")
            elif sample.name == "modelfleet_requests_total":
                counts.requests[model] = counts.requests.get(model, 0.0) + sample.value
            elif sample.name == "modelfleet_batch_rows_sum":
                counts.batch_rows_sum[model] = sample.value
            elif sample.name == "modelfleet_batch_rows_count":
                counts.batch_rows_count[model] = sample.value
    return replica, counts


def scrape(metrics_url: str, headers: dict[str, str], replicas: int = 1, attempts: int = 40) -> ServerCounts | None:
    """The ingress's counters (at `metrics_url`) summed over `replicas` replicas; None when the target has no
    modelfleet metrics there."""
    seen: dict[str, ServerCounts] = {}
    with httpx.Client(timeout=10, headers={k: v for k, v in headers.items() if k == "Authorization"}) as client:
        for _ in range(attempts):
            try:
                resp = client.get(metrics_url)
            except httpx.HTTPError:
                return None
            if resp.status_code != 200:
                return None
            replica, counts = _parse(resp.text)
            seen[replica or "?"] = counts
            if replica is None or len(seen) >= replicas:
                break
    if len(seen) < replicas:
        return None  # a replica never answered: a partial count would look like lost requests
    total = ServerCounts()
    for counts in seen.values():
        for mine, theirs in (
            (total.requests, counts.requests),
            (total.batch_rows_sum, counts.batch_rows_sum),
            (total.batch_rows_count, counts.batch_rows_count),
        ):
            for model, value in theirs.items():
                mine[model] = mine.get(model, 0.0) + value
    return total


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
