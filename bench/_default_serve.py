"""Target (b) of bench.ingress: the echo route as a Ray Serve user writes it, every Ray/Serve default kept.

Run as a script (`python -m bench._default_serve PORT [MAX_ONGOING_REQUESTS]`); serves until SIGTERM or
SIGINT. Self-contained on purpose: the deployment class is pickled by value, so
the replica needs nothing from `bench` on its path. The echo is the same
code as _bare_echo.py.

No `from __future__ import annotations` here: FastAPI must see the real `Request`
class in the pickled-by-value handlers' annotations.
"""

import signal
import sys
import threading
from typing import Any

import orjson
import ray
from fastapi import FastAPI, Request, Response
from ray import serve

api = FastAPI()


@serve.deployment
@serve.ingress(api)
class Echo:
    @api.post("/v2/models/echo/infer")
    async def infer(self, request: Request) -> Response:
        tensor = orjson.loads(await request.body())["inputs"][0]
        output = {"name": "y", "datatype": tensor["datatype"], "shape": tensor["shape"], "data": tensor["data"]}
        return Response(orjson.dumps({"model_name": "echo", "outputs": [output]}), media_type="application/json")

    @api.get("/v2/health/ready")
    async def ready(self) -> dict:
        return {"ready": True}


def serve_until_signalled(port: int, app: Any, runtime_env: dict | None = None, **run_options: Any) -> None:
    """A fresh Ray of our own, `app` on Serve's proxy at 127.0.0.1:`port` until SIGTERM or SIGINT; then both stop.
    (Also the plain-Serve side of bench.coldstart.)"""
    stop = threading.Event()
    # address="local": a fresh Ray of our own, never a `ray start` cluster that happens to run on this box.
    ray.init(address="local", runtime_env=runtime_env)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app, **run_options)
        # After ray.init, which installs its own SIGTERM handler.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        print(f"serving on 127.0.0.1:{port}", flush=True)
        while not stop.wait(1):
            pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        serve.shutdown()
        ray.shutdown()
    print("stopped.", flush=True)


def main(port: int, max_ongoing_requests: int | None = None) -> None:
    echo = Echo if max_ongoing_requests is None else Echo.options(max_ongoing_requests=max_ongoing_requests)
    serve_until_signalled(port, echo.bind())


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
