"""What a web page, a prober or a greedy client can get from a running app: only what it should.

Against the session's `modelfleet run` (keys on, loopback). Each case was a
way in before: forms and text/plain bodies from any web page, DNS rebinding,
model names from the open readiness probe, every model's name to any key,
raw CR/LF request ids in headers, and a reset instead of a 413.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import pytest
import yaml

from serve_apps._http import refuse_by_origin as _refuse_by_origin
from tests.helpers import DIGITS_KEY, ROOT, Fleet, delete_app, deploy_listening, free_port

ECHO = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}'


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/x-www-form-urlencoded"},  # what an HTML form posts, with no CORS preflight
        {"content-type": "text/plain"},  # what fetch(..., {mode: "no-cors"}) may post
        {"content-type": "multipart/form-data; boundary=x"},
        {},  # no Content-Type at all
    ],
)
@pytest.mark.parametrize("path", ["/v2/models/echo/infer", "/v1/models/echo:predict"])
def test_inference_needs_application_json(client, path: str, headers: dict) -> None:
    body = ECHO if "v2" in path else b'{"instances": [[1.0]]}'
    response = client.post(path, content=body, headers=headers)
    if not headers:  # httpx adds no type for raw content: make sure none went out
        assert "content-type" not in response.request.headers
    assert response.status_code == 415 and "application/json" in response.json()["error"]


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "localhost.", "0.0.0.0:8000"])
@pytest.mark.parametrize(
    "path", ["/v2/models/echo/infer", "/v2/health/ready", "/v2", "/docs", "/static-offline-docs/swagger-ui.css"]
)
def test_a_loopback_server_answers_loopback_host_names_only(client, host: str, path: str) -> None:
    method = "POST" if path.endswith("infer") else "GET"
    response = client.request(method, path, content=ECHO, headers={"host": host, "content-type": "application/json"})
    assert response.status_code == 400 and "DNS rebinding" in response.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8000", "LOCALHOST", "127.0.0.2:1"])
def test_loopback_host_names_are_served(client, host: str) -> None:
    response = client.post(
        "/v2/models/echo/infer", content=ECHO, headers={"host": host, "content-type": "application/json"}
    )
    assert response.status_code == 200, response.text


def test_readiness_is_a_boolean_without_model_names(fleet: Fleet) -> None:
    with fleet.client(key=None) as anonymous:
        ready = anonymous.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_a_key_lists_only_the_models_it_may_invoke(fleet: Fleet) -> None:
    with fleet.client(key=DIGITS_KEY) as client:
        assert client.get("/v2").json()["models"] == ["digits"]
    with fleet.client() as admin:
        assert {"digits", "echo", "embeddings"} <= set(admin.get("/v2").json()["models"])


@pytest.mark.parametrize("request_id", ["a\tb", "x" * 300, "\x7f"])
def test_unsafe_request_ids_are_not_echoed(client, request_id: str) -> None:
    response = client.post("/v1/models/echo:predict", json={"instances": [[1.0]]}, headers={"x-request-id": request_id})
    # Served with a fresh id, or refused by the HTTP parser itself (it rejects DEL in a header): never echoed.
    assert response.status_code in (200, 400) and response.headers.get("x-request-id") != request_id


def test_a_v2_id_with_cr_lf_is_422_not_a_header(client) -> None:
    body = b'{"id": "a\\r\\nset-cookie: x=1", ' + ECHO[1:]
    response = client.post("/v2/models/echo/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "set-cookie" not in response.headers


def test_a_client_that_sends_a_whole_oversized_body_before_reading_gets_the_413(fleet: Fleet) -> None:
    """Before: the server answered early and closed with the body unread, so the client saw ECONNRESET."""
    from tests.helpers import ADMIN_KEY

    size = 64 * 1024 * 1024
    host, port = fleet.url.removeprefix("http://").split(":")
    head = (
        f"POST /v2/models/echo/infer HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head)
        chunk = b" " * (1024 * 1024)
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413") and b'"error"' in answer, answer[:300]


@pytest.mark.parametrize(
    ("server", "keyless", "host", "refused"),
    [
        (("127.0.0.1", 8000), True, "127.0.0.1:8000", None),
        (("10.0.0.5", 8000), True, "10.0.0.5:8000", 403),  # keyless, reached beyond loopback
        (("10.0.0.5", 8000), False, "models.example.com", None),  # keys on: any address, any name
        (("::1", 8000), False, "[::1]:8000", None),
        (("127.0.0.1", 8000), False, "attacker.example", 400),  # rebinding
        (None, True, None, 403),  # no local address known: not provably loopback
    ],
)
def test_refusal_by_where_a_request_arrived(server, keyless: bool, host: str | None, refused: int | None) -> None:
    scope = {"type": "http", "server": server, "headers": [(b"host", host.encode())] if host else []}
    refusal = _refuse_by_origin(scope, keyless)
    assert (refusal.status if refusal else None) == refused


def test_an_app_with_tls_serves_https_on_its_own_port(
    fleet: Fleet, ray_address: str, certificates: Path, tmp_path: Path
) -> None:
    """The spec's ingress.tls reaches the ingress replicas' listener: HTTPS, and no cleartext, on the app's port."""
    spec = yaml.safe_load((ROOT / "examples/echo/app.yaml").read_text())
    pem = str(certificates / "server.pem")
    spec.update(name="tls", route_prefix="/tls", ingress={"num_cpus": 0.05, "tls": {"cert_file": pem, "key_file": pem}})
    spec["models"][0]["resources"] = {"num_cpus": 0.05}
    path, port = tmp_path / "tls.yaml", free_port()
    path.write_text(yaml.safe_dump(spec))
    try:
        deploy_listening(ray_address, path, port)
        trusted = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [3.0]}]}
        answer = httpx.post(f"https://127.0.0.1:{port}/tls/v2/models/echo/infer", json=body, verify=trusted, timeout=30)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [3.0]
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{port}/tls/v2/models/echo/infer", json=body, timeout=10)
    finally:
        delete_app(ray_address, "tls")
