"""One app-wide view of metrics that many replicas count, each in its own process.

Every ingress replica and every model replica keeps its own `prometheus_client` registry and hands a snapshot of it
(cumulative values) to the app's hub every second or two. The hub's exposition is what `/metrics` answers, whichever
ingress replica a scrape reaches: the sum over replicas, each counted once (its latest snapshot, never two), with
an `app` label on every series.

A replica that stops (or is not heard from for `silent_after_s`) is *retired*: its last counters and histograms stay
in the sums, so an app-wide counter never goes back when a replica restarts (its gauges, e.g. requests in flight,
go). A retired replica that speaks again is taken back (its snapshot is cumulative: it replaces what was kept, never
adds to it). Only a restart of the hub itself resets the counters, which Prometheus's rate() and increase() expect.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["MetricsHub", "Snapshot", "snapshot"]

# (family name, type, help, ((sample name, ((label, value), ...), value), ...)): plain tuples, cheap to pickle.
Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]
Family = tuple[str, str, str, tuple[Sample, ...]]
Snapshot = tuple[Family, ...]

_CUMULATIVE = ("counter", "histogram", "summary")  # kept from a retired replica; its gauges go with it


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """The registry's current values, without `_created` series (a sum of creation times means nothing)."""
    families = []
    for metric in registry.collect():
        samples = tuple(
            (s.name, tuple(sorted(s.labels.items())), float(s.value))
            for s in metric.samples
            if not s.name.endswith("_created")
        )
        families.append((metric.name, metric.type, metric.documentation, samples))
    return tuple(families)


@dataclass
class _Source:
    families: Snapshot
    heard_at: float


@dataclass
class MetricsHub:
    """The app's metrics, summed over the replicas that push snapshots (`push`) and those that stopped."""

    app: str
    silent_after_s: float = 15.0
    clock: object = time.monotonic
    live: dict[str, _Source] = field(default_factory=dict)
    retired: dict[str, Snapshot] = field(default_factory=dict)
    own: Snapshot = ()  # the hub's own series (e.g. replicas per deployment), replaced whole by `set_own`

    def _now(self) -> float:
        return self.clock()  # type: ignore[operator]

    def push(self, source: str, families: Snapshot) -> None:
        """`source`'s latest cumulative values (a replica id), replacing what it pushed before."""
        self.retired.pop(source, None)
        self.live[source] = _Source(families, self._now())

    def retire(self, source: str) -> None:
        """`source` stopped: keep its counters and histograms in the sums, drop its gauges."""
        gone = self.live.pop(source, None)
        if gone is not None:
            self.retired[source] = tuple(f for f in gone.families if f[1] in _CUMULATIVE)

    def retire_silent(self) -> list[str]:
        """Retire the sources not heard from for `silent_after_s`; their ids."""
        now = self._now()
        silent = [s for s, src in self.live.items() if now - src.heard_at > self.silent_after_s]
        for source in silent:
            self.retire(source)
        return silent

    def set_own(self, families: Snapshot) -> None:
        self.own = families

    def sources(self) -> list[str]:
        return sorted(self.live)

    def merged(self) -> dict[str, tuple[str, str, dict[tuple[str, Labels], float]]]:
        """{family: (type, help, {(sample, labels): summed value})}, every sample labelled with the app."""
        out: dict[str, tuple[str, str, dict[tuple[str, Labels], float]]] = {}
        everything: Iterable[Snapshot] = (
            *(src.families for src in self.live.values()),
            *self.retired.values(),
            self.own,
        )
        for families in everything:
            for name, kind, doc, samples in families:
                entry = out.get(name)
                if entry is None:
                    entry = out[name] = (kind, doc, {})
                values = entry[2]
                for sample, labels, value in samples:
                    key = (sample, _with_app(labels, self.app))
                    values[key] = values.get(key, 0.0) + value
        return out

    def exposition(self) -> bytes:
        """The merged metrics in Prometheus's text format."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(self.merged()))
        return generate_latest(registry)

    def value(self, sample: str, **labels: str) -> float:
        """The merged value of one series (0 if absent): for tests and the status page."""
        wanted = set(labels.items())
        total = 0.0
        for _, _, values in self.merged().values():
            for (name, got), value in values.items():
                if name == sample and wanted <= set(got):
                    total += value
        return total


def _with_app(labels: Labels, app: str) -> Labels:
    if any(k == "app" for k, _ in labels):
        return labels
    return tuple(sorted((*labels, ("app", app))))


class _Merged(Collector):
    def __init__(self, merged: Mapping[str, tuple[str, str, dict[tuple[str, Labels], float]]]):
        self._merged = merged

    def collect(self) -> Iterator[Metric]:
        for name, (kind, doc, values) in sorted(self._merged.items()):
            metric = Metric(name, doc, kind)
            for (sample, labels), value in sorted(values.items(), key=_bucket_order):
                metric.add_sample(sample, dict(labels), value)
            yield metric


def _bucket_order(item: tuple[tuple[str, Labels], float]) -> tuple:
    """Samples grouped by series, buckets in increasing `le` (Prometheus wants them so)."""
    (sample, labels), _ = item
    le = dict(labels).get("le")
    rest = tuple((k, v) for k, v in labels if k != "le")
    return (rest, sample, float(le) if le is not None else 0.0)
