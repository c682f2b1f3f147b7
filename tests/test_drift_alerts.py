"""Drift, end to end: a served model's inputs shift, the app's monitor sees it within a window, a signed CloudEvent
reaches a webhook, the gauges say so, and the audit log has it; back in distribution, it is resolved."""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from standardwebhooks.webhooks import Webhook

from loadtests.app_process import AppProcess
from monitoring.audit import query, verify
from tests.helpers import ROOT, wait_until

WINDOW_ROWS = 200
SECRET = "whsec_" + base64.b64encode(b"drift-test-secret-0123456789abcd").decode()


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint on loopback that keeps what it was sent: (headers, body) each."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self.server.received.append((dict(self.headers), body))  # type: ignore[attr-defined]
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def events(self, type: str) -> list[dict]:
        return [json.loads(body) for _, body in self.received if json.loads(body)["type"] == type]


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.shutdown()
    server.server_close()


def _app(tmp_path: Path) -> Path:
    """The echo, embedded (one replica), watched for drift against 2,000 rows of two standard normal columns."""
    reference = tmp_path / "reference.npz"
    np.savez(reference, x=np.random.default_rng(0).normal(size=(2000, 2)).astype(np.float32))
    spec = yaml.safe_load((ROOT / "examples/echo/app.yaml").read_text())
    spec["models"][0].update(embedded=True, drift={"reference": str(reference), "window_rows": WINDOW_ROWS})
    del spec["models"][0]["autoscaling"]
    path = tmp_path / "echo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _send(url: str, rows: np.ndarray) -> None:
    for part in np.split(rows, len(rows) // 50):
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(part.shape), "data": part.ravel().tolist()}]}
        assert httpx.post(f"{url}/v2/models/echo/infer", json=body, timeout=30).status_code == 200


def _gauge(url: str, name: str) -> list[str]:
    return [line for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines() if line.startswith(name + "{")]


@pytest.mark.slow
@pytest.mark.own_ray
def test_shifted_inputs_alert_a_webhook_with_a_valid_signature_then_resolve(tmp_path: Path, receiver: Receiver) -> None:
    home = tmp_path / "home"
    home.mkdir()
    hooks = home / "webhooks.yaml"
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    hooks.write_text(yaml.safe_dump({"webhooks": [{"url": url, "secret_env": "DRIFT_TEST_SECRET"}]}))
    env = {**os.environ, "MODELFLEET_HOME": str(home), "DRIFT_TEST_SECRET": SECRET}
    env.pop("MODELFLEET_API_KEYS", None)
    rng = np.random.default_rng(1)
    with AppProcess(_app(tmp_path), tmp_path / "run.log", env=env) as app:
        _send(app.url, rng.normal(size=(2 * WINDOW_ROWS, 2)).astype(np.float32))
        wait_until(lambda: _gauge(app.url, "modelfleet_drift_detected"), 30, "a judged window", None, app.log_path)
        assert all(line.endswith(" 0.0") for line in _gauge(app.url, "modelfleet_drift_detected")), "a false alarm"

        shifted = rng.normal(size=(2 * WINDOW_ROWS, 2)).astype(np.float32)
        shifted[:, 0] += 3  # only the first column moves
        _send(app.url, shifted)
        wait_until(lambda: receiver.events("model.drift.detected"), 30, "the drift alert", None, app.log_path)
        headers, body = receiver.received[-1]
        Webhook(SECRET).verify(body, headers)  # raises unless signed with the secret, the Standard Webhooks way
        alert = json.loads(body)
        assert alert["source"] == "/modelfleet/apps/echo/monitor" and alert["subject"] == "echo/1", alert
        assert alert["data"]["drifted_features"] == ["x[0]"], alert["data"]
        assert _gauge(app.url, "modelfleet_drift_detected") == [
            'modelfleet_drift_detected{app="echo",model="echo",version="1"} 1.0'
        ]
        scores = _gauge(app.url, "modelfleet_drift_score")
        assert any('feature="x[0]"' in s and 'test="psi"' in s for s in scores), scores

        _send(app.url, rng.normal(size=(2 * WINDOW_ROWS, 2)).astype(np.float32))
        wait_until(lambda: receiver.events("model.drift.resolved"), 30, "the all-clear", None, app.log_path)
    audited = [r["action"] for r in query(home / "audit", model="echo") if r["action"].startswith("drift.")]
    assert audited == ["drift.detected", "drift.resolved"] and verify(home / "audit").ok
