"""The example fleet served by a real `modelfleet run`: correct answers on both protocols."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from tests.helpers import Fleet, check_docs_page


def _v2(client, model: str, inputs: list[dict], **extra) -> dict:
    response = client.post(f"/v2/models/{model}/infer", json={"inputs": inputs, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-modelfleet-model-version"] == body["model_version"]  # header and body agree
    return body


def test_digits_held_out_accuracy_over_v2(client) -> None:
    from examples.digits.model import load_split

    _, x_test, _, y_test = load_split()
    predicted = []
    for start in range(0, len(x_test), 50):  # several requests, several rows each
        rows = x_test[start : start + 50].astype(np.float32)
        body = _v2(
            client,
            "digits",
            [{"name": "pixels", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}],
        )
        (out,) = body["outputs"]
        assert out["name"] == "probabilities" and out["datatype"] == "FP32" and out["shape"] == [len(rows), 10]
        probs = np.asarray(out["data"]).reshape(out["shape"])
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
        predicted.extend(probs.argmax(axis=1))
    accuracy = float(np.mean(np.asarray(predicted) == y_test))
    assert accuracy >= 0.95, accuracy


def test_digits_v1_agrees_with_v2(client) -> None:
    from examples.digits.model import load_split

    _, x_test, _, _ = load_split()
    rows = x_test[:8].astype(np.float32)
    v1 = client.post("/v1/models/digits:predict", json={"instances": rows.tolist()})
    assert v1.status_code == 200, v1.text
    assert v1.headers["x-modelfleet-model-version"] == "1"  # V1 bodies cannot say which version answered
    v2 = _v2(
        client, "digits", [{"name": "pixels", "datatype": "FP32", "shape": [8, 64], "data": rows.ravel().tolist()}]
    )
    assert np.allclose(
        np.asarray(v1.json()["predictions"]), np.asarray(v2["outputs"][0]["data"]).reshape(8, 10), atol=1e-6
    )


def test_embeddings_equal_in_process_encode(client, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for a hub
    from sentence_transformers import SentenceTransformer

    from examples.embeddings.prepare import MODEL_DIR

    texts = ["A cat sits on the mat.", "Ray Serve scales models.", "ünïcödé and emoji 🚀", ""]
    expected = SentenceTransformer(str(MODEL_DIR), device="cpu").encode(texts, normalize_embeddings=True)
    body = _v2(client, "embeddings", [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}])
    got = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(body["outputs"][0]["shape"])
    assert got.shape == (len(texts), 384)
    assert np.abs(got - expected).max() <= 1e-5
    v1 = client.post("/v1/models/embeddings:predict", json={"instances": texts})
    assert v1.status_code == 200, v1.text
    assert np.abs(np.asarray(v1.json()["predictions"]) - expected).max() <= 1e-5


def test_every_datatype_round_trips(client) -> None:
    data = {
        "FP32": [0.5, -1.25, 3.0, 1e30],
        "FP64": [0.1, -2.5, 1e300, 7.0],
        "INT32": [1, -2, 2**31 - 1, -(2**31)],
        "INT64": [1, -2, 2**63 - 1, -(2**63)],
        "BOOL": [True, False, True, True],
        "BYTES": ["a", "", "ünï", "🚀"],
    }
    inputs = [{"name": f"in_{t.lower()}", "datatype": t, "shape": [2, 2], "data": d} for t, d in data.items()]
    body = _v2(client, "types", inputs, id="round-trip-1")
    assert body["id"] == "round-trip-1" and body["model_name"] == "types"
    outputs = {o["name"]: o for o in body["outputs"]}
    for t, d in data.items():
        out = outputs[f"out_{t.lower()}"]
        assert out["datatype"] == t and out["shape"] == [2, 2]
        if t == "FP32":
            assert np.allclose(out["data"], np.float32(d))
        else:
            assert out["data"] == d


def test_requested_outputs_subset(client) -> None:
    inputs = [
        {"name": f"in_{t.lower()}", "datatype": t, "shape": [1, 1], "data": [v]}
        for t, v in (("FP32", 1.0), ("FP64", 1.0), ("INT32", 1), ("INT64", 1), ("BOOL", True), ("BYTES", "x"))
    ]
    body = _v2(client, "types", inputs, outputs=[{"name": "out_bytes"}])
    assert [o["name"] for o in body["outputs"]] == ["out_bytes"]


def test_versioned_route_and_metadata(client) -> None:
    response = client.post(
        "/v2/models/echo/versions/1/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
    )
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0]
    meta = client.get("/v2/models/digits").json()
    assert meta["name"] == "digits" and meta["versions"] == ["1"] and meta["platform"] == "modelfleet/safetensors"
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]


def test_a_registry_reference_serves_the_version_it_was_pinned_to(client, fleet: Fleet) -> None:
    """`sleepy` names models:/digits@champion, version 2 when `run` read the spec: it reports that version, its
    versioned routes know no other, and the registry recorded the deployment. (Metadata only: a request would wake
    sleepy, whose standby test wants it idle.)"""
    from registry import Registry

    meta = client.get("/v2/models/sleepy").json()
    assert meta["versions"] == ["2"] and meta["platform"] == "modelfleet/safetensors", meta
    assert client.get("/v2/models/sleepy/versions/2").status_code == 200
    other = client.get("/v2/models/sleepy/versions/1")
    assert other.status_code == 404 and "it serves version(s) ['2']" in other.json()["error"], other.text
    registry = Registry()
    try:
        records = [(d.app, d.version, d.target, d.outcome) for d in registry.deployments("digits")]
    finally:
        registry.close()
    assert ("fleet", 2, fleet.ready()["ray_address"], "deployed") in records, records


def test_versions_side_by_side_split_sticky_by_unit_and_a_shadow_only_compares(client) -> None:
    """`twin` serves version 1, candidate 2 (50% of units, sticky) and shadow 3 (a copy of every request): each
    answer says which version gave it, a unit always meets the same one, either is reachable by its versioned route,
    and the shadow's answers are compared, never returned."""
    pixels = [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [float(i % 17) for i in range(64)]}]
    assert client.get("/v2/models/twin").json()["versions"] == ["1", "2", "3"]
    met: dict[str, set[str]] = {}
    for unit in [f"user-{i}" for i in range(16)] * 2:
        answer = client.post("/v2/models/twin/infer", json={"inputs": pixels}, headers={"x-modelfleet-unit": unit})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-modelfleet-model-version"] == answer.json()["model_version"]
        met.setdefault(unit, set()).add(answer.json()["model_version"])
    assert all(len(versions) == 1 for versions in met.values()), f"a unit met two versions: {met}"
    assert set().union(*met.values()) == {"1", "2"}, "half the units each (all 16 on one side: 1 in 32,768)"
    for version in ("1", "2", "3"):
        direct = client.post(f"/v2/models/twin/versions/{version}/infer", json={"inputs": pixels})
        assert direct.status_code == 200 and direct.json()["model_version"] == version, direct.text
        assert direct.json()["outputs"] == answer.json()["outputs"], "the same weights in every version"
    assert client.post("/v2/models/twin/versions/4/infer", json={"inputs": pixels}).status_code == 404

    def shadow(series: str, **labels: str) -> float:
        return _counter(client, series, "twin", version="3", **labels)

    eventually(lambda: shadow("modelfleet_shadow_requests", outcome="answered") >= 32, "every request copied")
    assert shadow("modelfleet_shadow_rows", agreement="agreed") >= 32
    assert shadow("modelfleet_shadow_rows", agreement="differed") == 0
    assert _counter(client, "modelfleet_requests", "twin", version="3", protocol="v2", status="200") == 1, (
        "version 3 answered a caller once: its own versioned route"
    )


def test_model_listings_v1_v2_and_the_repository_index(client, fleet: Fleet) -> None:
    specs = {m["name"]: m for m in yaml.safe_load(fleet.spec_path.read_text())["models"]}
    names = sorted(specs)
    assert client.get("/v1/models").json() == {"models": names}  # KServe V1
    assert client.get("/v2/models").json() == {"models": names}  # as KServe's V2 server answers it
    index = client.post("/v2/repository/index")  # the OIP repository extension; Triton's clients send no body
    assert index.status_code == 200, index.text
    assert [e["name"] for e in index.json()] == names
    by_name = {e["name"]: e for e in index.json()}
    assert by_name["digits"] == {"name": "digits", "version": "1", "state": "READY", "reason": ""}
    pinned = {"sleepy": "2"}  # models:/digits@champion when `run` read the spec (conftest)
    for entry in index.json():
        assert entry["version"] == pinned.get(entry["name"], str(specs[entry["name"]].get("version", "1")))
        assert entry["state"] in ("READY", "UNAVAILABLE") and (entry["state"] == "READY") == (entry["reason"] == "")
    ready_only = client.post("/v2/repository/index", json={"ready": True}).json()
    assert {e["state"] for e in ready_only} == {"READY"} and "digits" in {e["name"] for e in ready_only}
    assert client.post("/v2/repository/index", json={}).json() == index.json()
    for body, says in (
        ({"ready": "yes"}, "\"ready\" must be true or false, got 'yes'"),
        ({"ready": True, "repository": "x"}, "unknown field(s) ['repository']; the index takes only \"ready\""),
        ([], 'the body must be a JSON object, {"ready": true|false}, or empty'),
    ):
        refused = client.post("/v2/repository/index", json=body)
        assert refused.status_code == 422 and refused.json() == {"error": says}, refused.text


def test_health_and_server_metadata(client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/v2/models/embeddings/ready").json()["ready"] is True
    assert client.get("/v1/models/echo").json() == {"name": "echo", "ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "modelfleet" and {"digits", "embeddings", "echo"} <= set(server["models"])


def test_docs_and_openapi(client) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v2/models/{name}/infer" in paths and "/v1/models/{name}:predict" in paths


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_this_server(fleet: Fleet, page: str) -> None:
    with fleet.client(key=None) as client:  # the docs stay open without a key
        check_docs_page(client, page)


def test_metrics_count_requests(client) -> None:
    def served() -> float:
        text = client.get("/metrics").text
        series = 'modelfleet_requests_total{app="fleet",model="echo",protocol="v1",status="200",version="1"}'
        found = [line for line in text.splitlines() if line.startswith(series)]
        return float(found[0].split()[-1]) if found else 0.0

    before = served()
    for _ in range(3):
        assert client.post("/v1/models/echo:predict", json={"instances": [[1.0, 2.0]]}).status_code == 200
    assert served() == before + 3  # one ingress replica in the test fleet


def _digits_in_process(rows: np.ndarray) -> np.ndarray:
    import torch
    from safetensors.torch import load_file

    from examples.digits.model import DigitsNet
    from tests.helpers import FLEET_SPEC

    net = DigitsNet()
    net.load_state_dict(load_file(FLEET_SPEC.parent / "digits/artifacts/digits/1/model.safetensors"))
    with torch.inference_mode():
        return net.eval()(torch.from_numpy(rows)).numpy()


@pytest.mark.parametrize("rows", [1, 7, 40, 100])  # 100 > max_batch_size: a batch of its own
def test_batched_model_answers_each_caller_its_own_rows(client, rows: int) -> None:
    """Rows of concurrent callers share batches (max_batch_size 64) and are split back to the right caller."""
    from concurrent.futures import ThreadPoolExecutor

    from examples.digits.model import load_split

    _, x_test, _, _ = load_split()
    x_test = x_test.astype(np.float32)
    callers = min(8, len(x_test) // rows)
    expected = _digits_in_process(x_test[: callers * rows])

    def call(offset: int) -> tuple[int, np.ndarray]:
        chunk = x_test[offset : offset + rows]
        body = _v2(
            client,
            "digits",
            [{"name": "pixels", "datatype": "FP32", "shape": list(chunk.shape), "data": chunk.ravel().tolist()}],
        )
        return offset, np.asarray(body["outputs"][0]["data"]).reshape(rows, 10)

    with ThreadPoolExecutor(callers) as pool:
        for offset, probs in pool.map(call, range(0, callers * rows, rows)):
            assert np.allclose(probs, expected[offset : offset + rows], atol=1e-5)


def test_gpu_model_without_a_gpu_runs_on_cpu_with_a_warning(client, fleet: Fleet) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU fallback does not apply")
    good = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
    assert client.post("/v2/models/faulty/infer", json=good).status_code == 200
    assert "model faulty asks for 1.0 GPU(s) but this cluster has 0.0: it runs on CPU" in fleet.log()


def test_a_full_queue_is_a_503_with_retry_after_never_a_hang(fleet: Fleet) -> None:
    """`slow` holds 1 request and queues 1 more (0.3 s each): of 8 at once, the rest are turned away."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}]}

    def call(_: int):
        with fleet.client() as c:
            return c.post("/v2/models/slow/infer", json=body)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and "max_queued_requests" in r.json()["error"]
        else:
            assert r.json()["outputs"][0]["data"] == [4.0]


def test_a_model_past_the_deadline_is_a_503_not_a_hang(client) -> None:
    from tests.helpers import REQUEST_TIMEOUT_S

    heavy = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [100.0]}]}  # SlowNet: 8 s
    response = client.post("/v2/models/slow/infer", json=heavy)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert f"did not answer within {REQUEST_TIMEOUT_S:g}s" in response.json()["error"]


def test_pool_and_accelerator_become_ray_resources() -> None:
    from serve_apps.build import deployment_options
    from serve_apps.spec import ModelSpec

    spec = ModelSpec.model_validate(
        {
            "name": "m",
            "format": "builtin",
            "module": "echo",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
            "resources": {"pool": "gpu", "num_gpus": 0.5, "accelerator_type": "L4", "memory_mb": 512},
            "max_queued_requests": 10,
        }
    )
    actor = deployment_options(spec)["ray_actor_options"]
    assert actor == {
        "num_cpus": 1.0,
        "num_gpus": 0.5,
        "accelerator_type": "L4",
        "resources": {"pool:gpu": 0.001},
        "memory": 512 * 2**20,
    }
    assert deployment_options(spec)["max_queued_requests"] == 10
    on_cpu = deployment_options(spec, gpus_in_cluster=0)["ray_actor_options"]
    assert "num_gpus" not in on_cpu and "accelerator_type" not in on_cpu and on_cpu["resources"] == {"pool:gpu": 0.001}


def _batch_rows(client, model: str) -> tuple[float, float]:
    """(requests observed, sum of their batch sizes) from the ingress's modelfleet_batch_rows histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    count = total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.name == "modelfleet_batch_rows_count":
                count = sample.value
            if sample.labels.get("model") == model and sample.name == "modelfleet_batch_rows_sum":
                total = sample.value
    return count, total


def test_batch_sizes_are_observable_and_show_callers_sharing_batches(client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from examples.digits.model import load_split

    _, x_test, _, _ = load_split()

    def call(rows: int) -> None:
        chunk = x_test[:rows].astype(np.float32)
        _v2(
            client,
            "digits",
            [{"name": "pixels", "datatype": "FP32", "shape": list(chunk.shape), "data": chunk.ravel().tolist()}],
        )

    count0, sum0 = _batch_rows(client, "digits")
    call(7)
    count1, sum1 = _batch_rows(client, "digits")
    assert count1 == count0 + 1 and sum1 - sum0 >= 7  # a 7-row request is served in a batch of at least 7 rows
    shared = False
    for _ in range(5):  # batches form by timing: give concurrent callers a few chances to meet
        before_count, before_sum = _batch_rows(client, "digits")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, [3] * 8))
        after_count, after_sum = _batch_rows(client, "digits")
        assert after_count == before_count + 8
        if after_sum - before_sum > 8 * 3:  # some request's batch held rows of another caller
            shared = True
            break
    assert shared, "8 concurrent callers never shared a batch"


def _histogram(client, name: str, model: str) -> tuple[float, float]:
    """(count, sum) of one model's series of an ingress histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    count = total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.name == f"{name}_count":
                count = sample.value
            if sample.labels.get("model") == model and sample.name == f"{name}_sum":
                total = sample.value
    return count, total


def test_concurrent_callers_share_calls_over_the_local_hop_and_each_gets_its_own_rows(client) -> None:
    """The echo runs in a deployment of its own: requests that wait together cross the hop in one call
    (modelfleet_call_requests counts what each call carried), over a Unix socket to its replica on this node (the
    local hop: modelfleet_local_hop_calls), and every caller gets back exactly what it sent."""
    from concurrent.futures import ThreadPoolExecutor

    def call(i: int) -> None:
        rows = np.arange(i * 3, i * 3 + 3 * (1 + i % 3), dtype=np.float32).reshape(-1, 3)  # 1 to 3 rows, own values
        body = _v2(
            client,
            "echo",
            [{"name": "x", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}],
        )
        (out,) = body["outputs"]
        assert out["shape"] == list(rows.shape) and out["data"] == rows.ravel().tolist()

    shared = local = False
    # Calls fill by timing, and an ingress replica takes the local hop once it has heard from Serve that the echo's
    # replicas run (and found their sockets): give concurrent callers a few rounds to meet and the hop to be taken.
    for _ in range(8):
        calls_before, requests_before = _histogram(client, "modelfleet_call_requests", "echo")
        local_before = _counter(client, "modelfleet_local_hop_calls", "echo")
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(call, range(64)))
        calls_after, requests_after = _histogram(client, "modelfleet_call_requests", "echo")
        assert requests_after - requests_before == 64  # every request crossed the hop once
        shared = shared or calls_after - calls_before < 64  # some call carried more than one request
        local = local or _counter(client, "modelfleet_local_hop_calls", "echo") > local_before
        if shared and local:
            break
    assert shared, "32 concurrent callers never shared a call"
    assert local, "no call went over the local hop"


def test_serve_scales_on_the_requests_a_coalesced_call_carries(fleet: Fleet) -> None:
    """`elastic` admits one call per replica (max_ongoing_requests 1) and aims at one request per replica: with 6
    callers its one call carries them all, so Serve, counting calls, would see 1 and keep 1 replica. It counts the
    requests the replica reports (autoscaling_policy.py) and starts the second."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from loadtests.chaos import replica_pids

    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
    stop = threading.Event()

    def caller(_: int) -> None:
        with fleet.client() as c:
            while not stop.is_set():
                response = c.post("/v2/models/elastic/infer", json=body)
                assert response.status_code == 200, response.text

    deadline = time.monotonic() + 30  # bounds a failure: Serve starts a replica in a few seconds
    with ThreadPoolExecutor(6) as pool:
        callers = [pool.submit(caller, i) for i in range(6)]
        try:
            while len(replica_pids("fleet", "elastic")) < 2 and time.monotonic() < deadline:
                time.sleep(0.25)
        finally:
            stop.set()
        for c in callers:
            c.result()  # a failed request fails the test
    assert len(replica_pids("fleet", "elastic")) == 2, "Serve never scaled elastic past one replica under 6 callers"


def eventually(condition, what: str, timeout_s: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout_s  # bounds a failure; Serve starts or stops a replica in seconds
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.25)


def _counter(client, name: str, model: str, **labels: str) -> float:
    """Counter `name` of `model`, summed over the series that have `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"model": model, **labels}
    return sum(
        sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == f"{name}_total" and wanted.items() <= sample.labels.items()
    )


def test_a_scaled_to_zero_model_answers_from_the_standby_then_from_its_own_replica(client) -> None:
    """`sleepy` (digits, min_replicas 0) has no replica: the app's standby replica answers its first request, right,
    and wakes it; once its own replica runs, requests go there; idle again, it goes back to no replica."""
    import time

    from examples.digits.model import load_split
    from loadtests.chaos import replica_pids

    _, x_test, _, _ = load_split()
    rows = x_test[:5].astype(np.float32)
    request = [{"name": "pixels", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]

    def infer() -> np.ndarray:
        (out,) = _v2(client, "sleepy", request)["outputs"]
        return np.asarray(out["data"]).reshape(5, 10)

    eventually(lambda: not replica_pids("fleet", "sleepy"), "sleepy with no replica of its own")
    time.sleep(1.5)  # past the ingress's one-second view of the controller: the model is known to be at zero
    before = _counter(client, "modelfleet_standby_requests", "sleepy")
    assert np.allclose(infer(), _digits_in_process(rows), atol=1e-5)
    assert _counter(client, "modelfleet_standby_requests", "sleepy") == before + 1, "the standby did not answer"

    eventually(lambda: len(replica_pids("fleet", "sleepy")) == 1, "the woken model's own replica")

    def answered_by_its_own_replica() -> bool:
        standby = _counter(client, "modelfleet_standby_requests", "sleepy")
        assert np.allclose(infer(), _digits_in_process(rows), atol=1e-5)
        return _counter(client, "modelfleet_standby_requests", "sleepy") == standby

    eventually(answered_by_its_own_replica, "a request answered by sleepy's own replica")
    eventually(lambda: not replica_pids("fleet", "sleepy"), "sleepy back to no replica once idle")


def test_v1_instances_may_be_objects_keyed_by_input_name_for_one_input_too(client) -> None:
    rows = client.post("/v1/models/echo:predict", json={"instances": [[1.0, 2.0], [3.0, 4.0]]})
    objects = client.post("/v1/models/echo:predict", json={"instances": [{"x": [1.0, 2.0]}, {"x": [3.0, 4.0]}]})
    assert objects.status_code == 200, objects.text
    assert objects.json() == rows.json() == {"predictions": [[1.0, 2.0], [3.0, 4.0]]}
    missing = client.post("/v1/models/echo:predict", json={"instances": [{"x": [1.0]}, {"y": [1.0]}]})
    assert missing.status_code == 422
    assert missing.json() == {
        "error": "instances[1]: missing input(s) ['x'] and unknown input(s) ['y'] for model 'echo', which takes ['x']"
    }
