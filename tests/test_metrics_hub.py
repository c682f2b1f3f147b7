"""The app-wide sum of what replicas count (monitoring/metrics_hub.py): each replica once, none lost to a restart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics_hub import MetricsHub, snapshot


class Replica:
    """What one ingress replica counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("modelfleet_requests", "d", ["model", "version"], registry=self.registry)
        self.latency = Histogram(
            "modelfleet_request_latency_seconds", "d", ["model"], registry=self.registry, buckets=(0.01, 0.1, 1)
        )
        self.in_flight = Gauge("modelfleet_requests_in_flight", "d", ["model"], registry=self.registry)

    def serve(self, n: int, seconds: float, version: str = "1") -> None:
        for _ in range(n):
            self.requests.labels("digits", version).inc()
            self.latency.labels("digits").observe(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _samples(hub: MetricsHub) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(hub.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_replicas_are_summed_once_each_however_often_they_push() -> None:
    hub, a, b = MetricsHub("fleet"), Replica(), Replica()
    a.serve(3, 0.005)
    b.serve(5, 0.5)
    for _ in range(3):  # pushing the same cumulative counts again must not add them again
        hub.push("ingress:a", snapshot(a.registry))
        hub.push("ingress:b", snapshot(b.registry))
    samples = _samples(hub)
    labels = (("app", "fleet"), ("model", "digits"), ("version", "1"))
    assert samples[("modelfleet_requests_total", labels)] == 8
    bucket = (("app", "fleet"), ("le", "0.01"), ("model", "digits"))
    assert samples[("modelfleet_request_latency_seconds_bucket", bucket)] == 3
    assert samples[("modelfleet_request_latency_seconds_count", (("app", "fleet"), ("model", "digits")))] == 8
    assert not any(name.endswith("_created") for name, _ in samples)


def test_versions_stay_apart() -> None:
    hub, a = MetricsHub("fleet"), Replica()
    a.serve(2, 0.005, version="1")
    a.serve(7, 0.005, version="2")
    hub.push("ingress:a", snapshot(a.registry))
    assert hub.value("modelfleet_requests_total", model="digits", version="1") == 2
    assert hub.value("modelfleet_requests_total", model="digits", version="2") == 7


def test_a_replica_that_stops_keeps_its_counts_but_not_its_gauges() -> None:
    hub, a, b = MetricsHub("fleet"), Replica(), Replica()
    a.serve(4, 0.005)
    a.in_flight.labels("digits").set(2)
    b.serve(1, 0.005)
    hub.push("ingress:a", snapshot(a.registry))
    hub.push("ingress:b", snapshot(b.registry))
    assert hub.value("modelfleet_requests_in_flight", model="digits") == 2
    hub.retire("ingress:a")  # its process is gone; its replacement starts counting from zero
    replacement = Replica()
    replacement.serve(2, 0.005)
    hub.push("ingress:c", snapshot(replacement.registry))
    assert hub.value("modelfleet_requests_total", model="digits") == 4 + 1 + 2
    assert hub.value("modelfleet_request_latency_seconds_count", model="digits") == 7
    assert hub.value("modelfleet_requests_in_flight", model="digits") == 0


def test_a_silent_replica_is_retired_and_taken_back_without_double_counting() -> None:
    clock = Clock()
    hub, a = MetricsHub("fleet", silent_after_s=10, clock=clock), Replica()
    a.serve(3, 0.005)
    hub.push("ingress:a", snapshot(a.registry))
    clock.now = 11
    assert hub.retire_silent() == ["ingress:a"]
    assert hub.value("modelfleet_requests_total", model="digits") == 3  # kept while it is silent
    a.serve(2, 0.005)
    hub.push("ingress:a", snapshot(a.registry))  # it speaks again: its cumulative counts replace what was kept
    assert hub.value("modelfleet_requests_total", model="digits") == 5
    assert hub.retire_silent() == []


def test_buckets_come_out_in_order_for_every_series() -> None:
    hub, a = MetricsHub("fleet"), Replica()
    a.serve(1, 0.05)
    hub.push("ingress:a", snapshot(a.registry))
    lines = [line for line in hub.exposition().decode().splitlines() if "_bucket{" in line]
    les = [line.split('le="')[1].split('"')[0] for line in lines]
    assert les == ["0.01", "0.1", "1.0", "+Inf"]
    assert [float(line.split()[-1]) for line in lines] == [0, 1, 1, 1]  # cumulative, as Prometheus reads them


def test_an_app_label_a_series_already_has_is_kept() -> None:
    registry = CollectorRegistry()
    Gauge("modelfleet_replicas", "d", ["app", "model"], registry=registry).labels("other", "m").set(1)
    hub = MetricsHub("fleet")
    hub.set_own(snapshot(registry))
    assert ("modelfleet_replicas", (("app", "other"), ("model", "m"))) in _samples(hub)
