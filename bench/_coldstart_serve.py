"""Plain Ray Serve's side of bench.coldstart: the digits CNN as a Ray Serve user writes it, scaling from zero
with Ray Serve's most eager autoscaling settings, reached through Serve's own HTTP proxy.

Run as a script (`python -m bench._coldstart_serve PORT`); serves until SIGTERM or SIGINT. The replica loads
the same safetensors weights into the same module (examples/digits) and answers the same V2 body.

No `from __future__ import annotations`: FastAPI must see the real `Request` class in the handler.
"""

import sys
from pathlib import Path

from fastapi import FastAPI, Request
from ray import serve

from bench._default_serve import serve_until_signalled

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "examples" / "digits" / "artifacts" / "digits" / "1" / "model.safetensors"
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
api = FastAPI()


@serve.deployment(autoscaling_config=EAGER, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class Digits:
    def __init__(self) -> None:
        import torch
        from safetensors.torch import load_file

        from examples.digits.model import DigitsNet

        self.torch = torch
        self.net = DigitsNet()
        self.net.load_state_dict(load_file(str(WEIGHTS)))
        self.net.eval()

    @api.post("/v2/models/digits/infer")
    async def infer(self, request: Request) -> dict:
        tensor = (await request.json())["inputs"][0]
        with self.torch.inference_mode():
            pixels = self.torch.tensor(tensor["data"], dtype=self.torch.float32).reshape(tensor["shape"])
            probabilities = self.net(pixels).numpy()
        output = {"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape)}
        return {"model_name": "digits", "outputs": [{**output, "data": probabilities.ravel().tolist()}]}


def main(port: int) -> None:
    serve_until_signalled(
        port, Digits.bind(), runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, route_prefix="/", name="digits"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
