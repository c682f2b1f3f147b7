"""A real Prometheus (Debian's) scrapes the running fleet: what it stores per model and version agrees with what the
load generator sent, within 1%."""

from __future__ import annotations

from pathlib import Path

import httpx

from loadtests.chaos import BackgroundLoad
from tests.fixtures.prometheus import PrometheusServer
from tests.helpers import ADMIN_KEY, Fleet

LOAD_S = 5
PIXELS = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
TWIN = 'modelfleet_requests_total{app="fleet",model="twin"}'


def _per_version(prometheus: PrometheusServer) -> dict[str, float]:
    return {r["metric"]["version"]: float(r["value"][1]) for r in prometheus.query(f"sum by (version) ({TWIN})")}


def _settled(prometheus: PrometheusServer, at_least: float) -> dict[str, float]:
    """Per version, once Prometheus has scraped at least `at_least` requests in all and two scrapes agree."""
    last: dict[str, float] = {}

    def settled(result: list) -> bool:
        nonlocal last
        now = {r["metric"]["version"]: float(r["value"][1]) for r in result}
        done = now == last and sum(now.values()) >= at_least
        last = now
        return done

    prometheus.wait_for(f"sum by (version) ({TWIN})", settled, timeout=60)
    return last


def test_prometheus_counts_each_version_as_the_load_generator_sent_them(fleet: Fleet, tmp_path: Path) -> None:
    """`twin` serves versions 1 and 2 (sticky by key) and shadows 3: one load goes to version 2 by its URL, another
    at the same time to the model's own URL (the key's unit sticks to one version, which a first answer names)."""
    target = fleet.url.removeprefix("http://")
    with PrometheusServer([target], interval_s=1, bearer_token=ADMIN_KEY) as prometheus:
        prometheus.wait_for('up{job="modelfleet"}', lambda r: bool(r) and r[0]["value"][1] == "1")
        before = _per_version(prometheus)
        url = f"{fleet.url}/v2/models/twin"
        probe = httpx.post(f"{url}/infer", json=PIXELS, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        assert probe.status_code == 200, probe.text
        sticky = probe.headers["x-modelfleet-model-version"]
        # Both at once: each generator's count is its own, whichever version the other's requests reached.
        pinning = BackgroundLoad(f"{url}/versions/2/infer", PIXELS, tmp_path / "v2", LOAD_S, api_key=ADMIN_KEY)
        routing = BackgroundLoad(f"{url}/infer", PIXELS, tmp_path / "routed", LOAD_S, api_key=ADMIN_KEY)
        pinned, routed = pinning.finish(), routing.finish()
        assert pinned["failures"] == 0 and routed["failures"] == 0, (pinned, routed)
        assert pinned["requests"] > 200 and routed["requests"] > 200, (pinned, routed)

        sent = {"1": 0, "2": pinned["requests"]}
        sent[sticky] += routed["requests"] + 1  # and the probe
        after = _settled(prometheus, sum(before.values()) + 0.99 * sum(sent.values()))
        for version, requests in sent.items():
            counted = after.get(version, 0.0) - before.get(version, 0.0)
            assert abs(counted - requests) <= 0.01 * max(requests, 100), (version, counted, requests, before, after)
        assert after.get("3", 0.0) == before.get("3", 0.0), "a shadow's copies are not requests callers sent"
