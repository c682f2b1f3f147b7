"""The requests the benchmarks send, in one place.

Imported where Locust's gevent patches the process, so it imports nothing heavy (and never Ray).
"""

import json

ECHO_PATH = "/v2/models/echo/infer"
ECHO_BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode()
READY_PATH = "/v2/health/ready"
JSON_HEADERS = {"Content-Type": "application/json"}


def embeddings_body(sentences: list[str]) -> bytes:
    """A V2 BYTES request carrying `sentences` as one tensor of shape [n]."""
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(sentences)], "data": sentences}
    return json.dumps({"inputs": [tensor]}).encode()
