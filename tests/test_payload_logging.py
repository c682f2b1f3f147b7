"""Payload logging in the running fleet: `types` logs every request and response (its `logging:`), as CloudEvents
named as KServe's logger names them, in batched JSON lines under its destination, its text (`in_bytes`,
`out_bytes`) redacted."""

from __future__ import annotations

from pathlib import Path

import yaml

from monitoring.payload_log import read_payload_log
from serve_apps.auth import new_key
from tests.helpers import Fleet, wait_until

DATA = {"FP32": [0.5], "FP64": [0.25], "INT32": [3], "INT64": [4], "BOOL": [True], "BYTES": ["secret-ish"]}


def test_each_request_and_its_response_are_logged_with_the_named_input_redacted(fleet: Fleet) -> None:
    spec = yaml.safe_load(fleet.spec_path.read_text())
    destination = Path(next(m for m in spec["models"] if m["name"] == "types")["logging"]["destination"])
    ids = [f"payload-{new_key()[3:19]}-{i}" for i in range(3)]
    inputs = [{"name": f"in_{t.lower()}", "datatype": t, "shape": [1, 1], "data": d} for t, d in DATA.items()]
    with fleet.client() as client:
        for request_id in ids:
            body = {"id": request_id, "inputs": inputs}
            assert client.post("/v2/models/types/infer", json=body).status_code == 200

    def logged() -> list[dict]:
        return [e for e in read_payload_log(destination) if e["id"] in ids] if destination.exists() else []

    wait_until(lambda: len(logged()) == 2 * len(ids), 30, "the payload log's batches", None, fleet.log_path)
    events = logged()
    kinds = sorted((e["id"], e["type"].rsplit(".", 1)[-1]) for e in events)
    assert kinds == sorted((i, kind) for i in ids for kind in ("request", "response"))
    request = next(e for e in events if e["type"] == "org.kubeflow.serving.inference.request")
    assert (request["namespace"], request["inferenceservicename"], request["modelversion"]) == ("fleet", "types", "1")
    assert request["data"]["inputs"]["in_bytes"] == "[redacted]" and request["data"]["inputs"]["in_int64"] == [[4]]
    assert not any("secret-ish" in str(e["data"]) for e in events)
    files = sorted(p.relative_to(destination).parts[:2] for p in destination.rglob("*.jsonl"))
    assert files and all(parts == ("fleet", "types") for parts in files), files
