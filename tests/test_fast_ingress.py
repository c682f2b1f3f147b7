"""The fast path in front of the models: the ingress's own listener, and models embedded in the ingress.

`modelfleet run` has its ingress replicas listen on the app's port themselves
(no Ray proxy hop), and `embedded: true` models answer inside the ingress (no
handle hop). Both must keep every contract of the slow path.
"""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import psutil
import pytest
import yaml
from typer.testing import CliRunner

from modelfleet.cli import app
from serve_apps.listener import Listener
from tests.helpers import ADMIN_KEY, DIGITS_KEY, ROOT, Fleet, free_port, listening_addresses, not_on_loopback, run_cli

ECHO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


# ---- the listener, without Ray ----------------------------------------------


async def _hello(scope, receive, send) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_listeners_share_a_port_and_answer_only_once_ready() -> None:
    """Two replicas (or an update's new one next to the old) listen on one port; neither answers before it is ready.

    A replica listens from its constructor on, so the port never refuses while
    replicas come and go; connections the kernel hands it early wait for it.
    """
    port = free_port()

    async def scenario() -> None:
        ready = {"first": False, "second": False}
        first, second = Listener(_hello, "127.0.0.1", port), Listener(_hello, "127.0.0.1", port)
        first.start(lambda: ready["first"])
        second.start(lambda: ready["second"])
        async with httpx.AsyncClient(timeout=10) as client:
            early = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/"))
            await asyncio.sleep(0.3)
            assert not early.done()  # queued by the kernel, not refused, and not answered yet
            ready["first"] = ready["second"] = True
            assert (await early).text == "hello"
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "hello"
        await first.stop()
        async with httpx.AsyncClient(timeout=5) as client:  # the second still serves new connections
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "hello"
        await second.stop()
        async with httpx.AsyncClient(timeout=5) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")

    asyncio.run(scenario())


def test_a_taken_port_fails_the_listener_with_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            Listener(_hello, "127.0.0.1", port)


def test_stopping_a_listener_that_never_became_ready_returns_and_frees_its_port() -> None:
    """A replica stopped while still starting: stop() must neither hang (TimeoutError) nor leave the port bound."""
    port = free_port()

    async def scenario() -> None:
        listener = Listener(_hello, "127.0.0.1", port)
        listener.start(lambda: False)
        await asyncio.wait_for(listener.stop(), 5)

    asyncio.run(scenario())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with socket.socket() as again:  # and the port can be bound afresh
        again.bind(("127.0.0.1", port))


# ---- embedded: the spec's rules ---------------------------------------------


def _echo_spec(tmp_path, **model_changes) -> str:
    spec = yaml.safe_load((ROOT / "examples/echo/app.yaml").read_text())
    spec["models"][0].pop("autoscaling")
    spec["models"][0].update(embedded=True, **model_changes)
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_an_embedded_model_validates(tmp_path) -> None:
    result = CliRunner().invoke(app, ["validate", _echo_spec(tmp_path)])
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    "change, says",
    [
        ({"resources": {"num_cpus": 0.1, "pool": "gpu"}}, "resources.pool"),
        ({"resources": {"num_cpus": 0.1, "num_gpus": 1}}, "resources.num_gpus"),
        ({"autoscaling": {"min_replicas": 0}}, "autoscaling"),
        ({"max_queued_requests": 4}, "max_queued_requests"),
    ],
)
def test_embedded_refuses_what_only_a_deployment_has(tmp_path, change: dict, says: str) -> None:
    result = CliRunner().invoke(app, ["validate", _echo_spec(tmp_path, **change)])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "app.yaml" in line and "embedded" in line and says in line, line


def test_a_pipeline_step_cannot_be_embedded(tmp_path) -> None:
    spec = yaml.safe_load((ROOT / "examples/fraud/app.yaml").read_text())
    step = next(m for m in spec["models"] if m["name"] == "featurizer")
    for field in ("autoscaling", "max_queued_requests", "max_ongoing_requests"):
        step.pop(field, None)
    step["resources"] = {"num_cpus": 0.1}
    step["embedded"] = True
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(spec))
    (tmp_path / "artifacts").symlink_to(ROOT / "examples/fraud/artifacts")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and f"{step['name']!r} is embedded in the ingress" in result.stderr, result.stderr


# ---- on the session's `modelfleet run` --------------------------------------


def _listening_process(port: int) -> psutil.Process:
    owners = {
        c.pid for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert len(owners) == 1, owners
    return psutil.Process(owners.pop())


def test_the_app_port_is_served_by_the_ingress_replica_itself(fleet: Fleet) -> None:
    port = int(fleet.url.rsplit(":", 1)[1])
    assert _listening_process(port).cmdline()[0].startswith("ray::ServeReplica:fleet:ingress")
    proxy_port = int(fleet.proxy_url.rsplit(":", 1)[1])
    assert _listening_process(proxy_port).cmdline()[0].startswith("ray::ProxyActor")
    # Ray's proxy serves the same app by its route prefix: both doors lead to the same models.
    for url in (fleet.url, fleet.proxy_url):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as client:
            assert client.post("/v2/models/echo/infer", json=ECHO).json()["outputs"][0]["data"] == [1.0, 2.0]


def test_an_embedded_model_answers_without_a_deployment(fleet: Fleet, client, ray_address: str) -> None:
    """`types` (the every-datatype echo of tests/conftest.py) is embedded: test_serving covers its answers."""
    data = {"FP32": [0.5], "FP64": [0.25], "INT32": [3], "INT64": [4], "BOOL": [True], "BYTES": ["x"]}
    inputs = [{"name": f"in_{t.lower()}", "datatype": t, "shape": [1, 1], "data": d} for t, d in data.items()]
    response = client.post("/v2/models/types/infer", json={"inputs": inputs, "outputs": [{"name": "out_int32"}]})
    assert response.status_code == 200 and response.json()["outputs"] == [
        {"name": "out_int32", "datatype": "INT32", "shape": [1, 1], "data": [3]}
    ], response.text
    ready = client.get("/v2/models/types/ready")
    assert ready.status_code == 200 and ready.json()["state"] == "HEALTHY"
    status = run_cli("status", "--address", ray_address, "--json")
    deployments = {(r["app"], r["deployment"]) for r in json.loads(status.stdout)}
    assert ("fleet", "echo") in deployments and ("fleet", "types") not in deployments
    metrics = client.get("/metrics").text
    assert 'modelfleet_requests_total{app="fleet",model="types",protocol="v2",status="200",version="1"}' in metrics


def test_the_run_prints_both_doors(fleet: Fleet) -> None:
    assert f"serving app 'fleet' at {fleet.url}" in fleet.log()
    assert fleet.proxy_url != fleet.url


def test_run_refuses_a_proxy_port_equal_to_the_app_port(environ_kept) -> None:
    port = free_port()
    result = CliRunner().invoke(
        app, ["run", str(ROOT / "examples/echo/app.yaml"), "--port", str(port), "--proxy-port", str(port)]
    )
    assert result.exit_code == 2 and "--proxy-port" in result.stderr


@pytest.mark.parametrize(
    "path, body, headers, status",
    [
        ("/v2/models/echo/infer", ECHO, {}, 200),
        ("/v1/models/echo:predict", {"instances": [[1.0, 2.0]]}, {}, 200),
        ("/v2/models/nope/infer", ECHO, {}, 404),
        ("/v2/models/echo/infer", b"{not json", {}, 400),
        ("/v2/models/echo/infer", b"x=1", {"Content-Type": "text/plain"}, 415),
        ("/v2/models/echo/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1]}]}, {}, 422),
        ("/v2/models/echo/infer", ECHO, {"Authorization": "Bearer wrong"}, 401),
        ("/v2/models/echo/infer", ECHO, {"Authorization": f"Bearer {DIGITS_KEY}"}, 403),
        (
            "/v2/models/faulty/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [-1, 0, 0, 0]}]},
            {},
            500,
        ),
    ],
)
def test_the_listener_answers_as_rays_proxy_does(fleet: Fleet, path: str, body, headers: dict, status: int) -> None:
    """The listener takes the inference routes past FastAPI's router: same answers, errors included, as through the
    proxy."""
    answers = []
    for url in (fleet.url, fleet.proxy_url):
        sent = {"Authorization": f"Bearer {ADMIN_KEY}", **headers}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
        response = httpx.post(url + path, content=content, headers=sent, timeout=60)
        answer = response.json()
        answer.pop("id", None)
        answer.pop("request_id", None)  # fresh per request
        if "error" in answer:
            answer["error"] = answer["error"].split(" request id ")[0]
        answers.append((response.status_code, answer))
    assert answers[0] == answers[1] and answers[0][0] == status, answers


def test_the_run_listens_on_loopback_only(fleet: Fleet) -> None:
    """Ray's GCS, raylet, workers and agents too, not just the HTTP ports (Ray's single-machine mode)."""
    assert listening_addresses(fleet.process.pid), "the run's processes listen somewhere"
    assert not_on_loopback(fleet.process.pid) == set()
