"""The app's /metrics with several replicas of a model: each replica's counts summed once, Serve's replica counts in."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from loadtests.server_counts import SETTLE_S
from tests.helpers import Fleet, wait_until

ECHO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
CALLS = 60


def _series(fleet: Fleet, name: str, **labels: str) -> float:
    with fleet.client() as client:
        text = client.get("/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_two_model_replicas_are_counted_once_each(fleet: Fleet) -> None:
    """`sturdy` runs 2 replicas: what the model replicas count (model latency per call, unbatched) and what the
    ingress counts (requests) both grow by exactly the calls made, and the monitor sees both replicas running."""
    before = (
        _series(fleet, "modelfleet_requests_total", model="sturdy"),
        _series(fleet, "modelfleet_model_latency_seconds_count", model="sturdy"),
    )
    with fleet.client() as client, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: client.post("/v2/models/sturdy/infer", json=ECHO).status_code, range(CALLS)))
    assert codes == [200] * CALLS

    def counted() -> bool:
        return (
            _series(fleet, "modelfleet_requests_total", model="sturdy") - before[0] == CALLS
            and _series(fleet, "modelfleet_model_latency_seconds_count", model="sturdy") - before[1] == CALLS
        )

    wait_until(counted, 10 * SETTLE_S, "both replicas' counts in the app's /metrics", None, fleet.log_path)
    wait_until(  # the monitor asks Serve's controller every 5 s
        lambda: (
            [_series(fleet, "modelfleet_replicas", model="sturdy", state=s) for s in ("running", "desired")] == [2, 2]
        ),
        30,
        "sturdy's replicas in the app's /metrics",
        None,
        fleet.log_path,
    )
