"""Fuzzing the running app: no request, however malformed, gets a 5xx, a hang, or a server that stops answering.

Two fuzzers against the session's `modelfleet run`:
- schemathesis, from the app's own /openapi.json: every route, bounded examples,
  sent as generated and again aimed at real models so bodies reach the decoders;
- a raw-socket fuzzer for what OpenAPI cannot express: broken request lines,
  huge and duplicate headers, bad chunked encoding, truncated bodies, invalid
  UTF-8, deep JSON nesting. Its cases are generated here, and every case that
  ever failed is kept as a file under tests/fuzz_corpus/ and replayed (a file
  named NNN-... must get exactly status NNN).

A 503 that says when to come back (Retry-After: a full queue, a model still
starting) is an answer, not a failure.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.helpers import ADMIN_KEY, HEADER_TIMEOUT_S, Fleet

CORPUS = Path(__file__).parent / "fuzz_corpus"
SAFE_MODELS = ["echo", "types", "digits", "embeddings"]  # not `faulty` (a 500 by design) or `slow` (a 503 by design)
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _acceptable(response: httpx.Response) -> bool:
    return response.status_code < 500 or (response.status_code == 503 and "retry-after" in response.headers)


def _healthy(fleet: Fleet) -> None:
    with fleet.client() as client:
        answer = client.post("/v1/models/echo:predict", json={"instances": [[1.0]]})
    assert answer.status_code == 200 and answer.json() == {"predictions": [[1.0]]}


def _operations(fleet: Fleet) -> list:
    schema = schemathesis.openapi.from_url(f"{fleet.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_openapi_routes_never_answer_5xx(fleet: Fleet) -> None:
    # Hypothesis driven directly: schemathesis's pytest plugin does not run under this pytest (9.x).
    operations = _operations(fleet)
    assert len(operations) >= 12, [op.label for op in operations]  # every route of the app is in the schema
    failures: list[str] = []

    for operation in operations:

        @settings(
            max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
        )
        @given(case=operation.as_strategy())
        def route(case) -> None:
            responses = [case.call(base_url=fleet.url, headers=AUTH, timeout=30)]
            if "name" in (case.path_parameters or {}):  # again at a real model, so the body reaches its decoder
                case.path_parameters["name"] = SAFE_MODELS[len(repr(case.body)) % len(SAFE_MODELS)]
                responses.append(case.call(base_url=fleet.url, headers=AUTH, timeout=30))
            for response in responses:
                if not _acceptable(response):
                    failures.append(
                        f"{response.request.method} {response.request.url} -> {response.status_code}: "
                        f"{response.text[:300]}"
                    )

        route()
    assert not failures, "\n".join(failures[:20])
    _healthy(fleet)


# ---- raw bytes -------------------------------------------------------------


def _request(
    body: bytes, *, path: str = "/v2/models/echo/infer", headers: str = "", content_type: str = "application/json"
) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    )
    return head.encode() + body


def _chunked(chunks: bytes) -> bytes:
    return (
        f"POST /v2/models/echo/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + chunks


_GOOD = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}'
_TYPES_BYTES = b'{"inputs": [{"name": "in_bytes", "datatype": "BYTES", "shape": [1, 1], "data": ["%s"]}]}'


def _generated_cases() -> dict[str, bytes]:
    rng = random.Random(12)
    cases = {
        "garbage": bytes(rng.randrange(256) for _ in range(512)),
        "no-version": b"GET /v2/health/live\r\n\r\n",
        "bad-method": b"P\x00ST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "http-2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "http-9-version": b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        "space-in-path": b"GET /v2 /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "absolute-uri": b"GET http://evil.example/v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "percent-junk-path": b"GET /v2/models/%ff%00%2e%2e/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "header-without-colon": b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nNoColonHere\r\n\r\n",
        "obs-fold-header": b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\r\n b\r\n\r\n",
        "bare-lf": b"GET /v2/health/live HTTP/1.1\nHost: 127.0.0.1\n\n",
        "huge-header": b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        "many-headers": b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: 1\r\n" * 20_000 + b"\r\n",
        "duplicate-content-length": _request(_GOOD, headers="Content-Length: 5\r\n"),
        "duplicate-host": _request(_GOOD, headers="Host: evil.example\r\n"),
        "duplicate-authorization": _request(_GOOD, headers="Authorization: Bearer nope\r\n"),
        "duplicate-content-type": _request(_GOOD, headers="Content-Type: text/plain\r\n"),
        "negative-content-length": _request(_GOOD).replace(b"Content-Length: ", b"Content-Length: -"),
        "huge-content-length": _request(_GOOD).replace(
            f"Content-Length: {len(_GOOD)}".encode(), b"Content-Length: 99999999999999999999"
        ),
        "content-length-and-chunked": _request(_GOOD, headers="Transfer-Encoding: chunked\r\n"),
        "chunked-bad-size": _chunked(b"zz\r\n" + _GOOD + b"\r\n0\r\n\r\n"),
        "chunked-size-too-big": _chunked(b"ffffffffffffffffff\r\n" + _GOOD + b"\r\n0\r\n\r\n"),
        "chunked-no-terminator": _chunked(b"%x\r\n" % len(_GOOD) + _GOOD + b"\r\n"),
        "chunked-wrong-length": _chunked(b"5\r\n" + _GOOD + b"\r\n0\r\n\r\n"),
        "chunked-ok": _chunked(b"%x\r\n" % len(_GOOD) + _GOOD + b"\r\n0\r\n\r\n"),
        "truncated-body": _request(_GOOD)[:-20],
        "truncated-headers": _request(_GOOD)[:40],
        "invalid-utf8-json": _request(
            b'{"inputs": [{"name": "\xff\xfe", "datatype": "FP32", "shape": [1], "data": [1]}]}'
        ),
        "invalid-utf8-string": _request(_TYPES_BYTES % b"\xc3\x28", path="/v2/models/types/infer"),
        "lone-surrogate": _request(_TYPES_BYTES % b"\\ud800", path="/v2/models/types/infer"),
        "nul-in-string": _request(_TYPES_BYTES % b"a\\u0000b", path="/v2/models/types/infer"),
        "deep-json-arrays": _request(b"[" * 100_000 + b"]" * 100_000),
        "deep-json-objects": _request(b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        "deep-data": _request(
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": '
            + b"[" * 5000
            + b"1"
            + b"]" * 5000
            + b"}]}"
        ),
        "numbers-overflow": _request(
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1e999999]}]}'
        ),
        "bom-prefix": _request(b"\xef\xbb\xbf" + _GOOD),
        "json-not-object": _request(b'"inputs"'),
        "empty-body": _request(b""),
        "v1-mixed": _request(b'{"instances": [[1.0], ["' + b"x" * 10_000 + b'"]]}', path="/v1/models/echo:predict"),
        "pipelined-garbage": _request(_GOOD) + b"\x16\x03\x01\x00\xa5\x01\x00\x00",  # a TLS hello after a request
        "tls-hello-to-http": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(160),
    }
    for i in range(20):  # mutations of a good request: bytes flipped, cut or repeated
        raw = bytearray(_request(_GOOD))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(raw))
            choice = rng.random()
            if choice < 0.5:
                raw[at] = rng.randrange(256)
            elif choice < 0.75:
                del raw[at : at + rng.randint(1, 16)]
            else:
                raw[at:at] = raw[at : at + rng.randint(1, 64)]
        cases[f"mutation-{i:02d}"] = bytes(raw)
    return cases


def _corpus_cases() -> dict[str, bytes]:
    return {
        f"corpus/{path.name}": path.read_bytes().replace(b"%ADMIN_KEY%", ADMIN_KEY.encode())
        for path in sorted(CORPUS.glob("*.http"))
    }


CASES = {**_generated_cases(), **_corpus_cases()}


def _exchange(url: str, payload: bytes, wait_s: float) -> bytes:
    """Send `payload`, then read until the server answers and closes, or `wait_s` passes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # no more bytes: a truncated request stays truncated
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on it before we finished sending: that is an answer too
        answer = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"no answer and no close within {wait_s}s") from None
            if not data:
                break
            answer += data
        else:
            raise AssertionError(f"still sending after {wait_s}s")
    return answer


@pytest.mark.parametrize("name", sorted(CASES))
def test_raw_requests_get_no_5xx_and_no_hang(fleet: Fleet, name: str) -> None:
    answer = _exchange(fleet.url, CASES[name], wait_s=HEADER_TIMEOUT_S + 20)
    statuses = [
        int(line.split()[1]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.") and len(line.split()) > 1
    ]
    server_errors = [s for s in statuses if s >= 500 and not (s == 503 and b"retry-after" in answer.lower())]
    assert not server_errors, f"{name}: {answer[:500]!r}"
    expected = Path(name).name.split("-", 1)[0]
    if expected.isdigit():  # a corpus case that must get exactly this status
        assert statuses[:1] == [int(expected)], f"{name}: {answer[:500]!r}"
    _healthy(fleet)
