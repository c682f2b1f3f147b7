"""Plain Ray Serve's side of bench.coldstart: digits or MiniLM as a Ray Serve user writes them, scaling from zero
with Ray Serve's most eager autoscaling settings, reached through Serve's own HTTP proxy.

Run as a script (`python -m bench._coldstart_serve PORT digits|embeddings`); serves until SIGTERM or SIGINT. The
replica loads the same weights as modelfleet's side (digits: the safetensors into examples/digits' module; MiniLM:
the folder into sentence-transformers) and answers the same V2 body.

No `from __future__ import annotations`: FastAPI must see the real `Request` class in the handler.
"""

import sys
from pathlib import Path

from fastapi import FastAPI, Request
from ray import serve

from bench._default_serve import serve_until_signalled

REPO = Path(__file__).resolve().parent.parent
DIGITS_WEIGHTS = REPO / "examples" / "digits" / "artifacts" / "digits" / "1" / "model.safetensors"
MINILM = REPO / "examples" / "embeddings" / "artifacts" / "all-MiniLM-L6-v2"
# Ray Serve at its most eager: decide at once on the fewest metrics, go back to zero soon after.
EAGER = {
    "min_replicas": 0,
    "initial_replicas": 0,
    "max_replicas": 1,
    "upscale_delay_s": 0,
    "downscale_delay_s": 2,
    "downscale_to_zero_delay_s": 2,
    "metrics_interval_s": 0.1,
    "look_back_period_s": 0.5,
}
digits_api, embeddings_api = FastAPI(), FastAPI()


def _v2(model: str, name: str, array) -> dict:
    output = {"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.ravel().tolist()}
    return {"model_name": model, "outputs": [output]}


@serve.deployment(autoscaling_config=EAGER, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(digits_api)
class Digits:
    def __init__(self) -> None:
        import torch
        from safetensors.torch import load_file

        from examples.digits.model import DigitsNet

        self.torch = torch
        self.net = DigitsNet()
        self.net.load_state_dict(load_file(str(DIGITS_WEIGHTS)))
        self.net.eval()

    @digits_api.post("/v2/models/digits/infer")
    async def infer(self, request: Request) -> dict:
        tensor = (await request.json())["inputs"][0]
        with self.torch.inference_mode():
            pixels = self.torch.tensor(tensor["data"], dtype=self.torch.float32).reshape(tensor["shape"])
            return _v2("digits", "probabilities", self.net(pixels).numpy())


@serve.deployment(autoscaling_config=EAGER, ray_actor_options={"num_cpus": 1})
@serve.ingress(embeddings_api)
class Embeddings:
    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(MINILM), device="cpu", local_files_only=True)

    @embeddings_api.post("/v2/models/embeddings/infer")
    async def infer(self, request: Request) -> dict:
        texts = (await request.json())["inputs"][0]["data"]
        return _v2("embeddings", "embedding", self.model.encode(texts, normalize_embeddings=True))


def main(port: int, model: str) -> None:
    app = {"digits": Digits, "embeddings": Embeddings}[model].bind()
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    serve_until_signalled(port, app, runtime_env={"env_vars": env}, route_prefix="/", name=model)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
