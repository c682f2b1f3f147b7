"""Target (a) of bench.ingress: the echo route on plain FastAPI + uvicorn, the ceiling to compare with.

`uvicorn bench._bare_echo:app --workers 1`. Same work per request as the
default-Serve echo in _default_serve.py: orjson in, orjson out.
"""

import orjson
from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/v2/models/echo/infer")
async def infer(request: Request) -> Response:
    tensor = orjson.loads(await request.body())["inputs"][0]
    output = {"name": "y", "datatype": tensor["datatype"], "shape": tensor["shape"], "data": tensor["data"]}
    return Response(orjson.dumps({"model_name": "echo", "outputs": [output]}), media_type="application/json")


@app.get("/v2/health/ready")
async def ready() -> dict:
    return {"ready": True}
