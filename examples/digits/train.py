"""Train DigitsNet on the bundled digits (seeded, CPU, seconds) and save safetensors weights.

python -m examples.digits.train [--out PATH] [--force] [--register] [--fail-rate R] [--delay-ms MS]

--register       then register the weights (trained now or before) as model `digits` with their held-out accuracy:
                 `modelfleet models register`, in $MODELFLEET_HOME's registry unless MODELFLEET_REGISTRY_URL says
--fail-rate R    make a deliberately bad version (for the canary rollback tour): FaultyDigitsNet weights whose every
--delay-ms MS    call sleeps MS then fails with probability R (0..1); written to artifacts/digits-faulty/ by default
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples._artifacts import Registration, save_weights, training_cli
from examples.digits.model import DigitsNet, FaultyDigitsNet, load_split

ARTIFACTS = Path(__file__).parent / "artifacts"
DEFAULT_OUT = ARTIFACTS / "digits" / "1" / "model.safetensors"
FAULTY_OUT = ARTIFACTS / "digits-faulty" / "model.safetensors"
MIN_ACCURACY = 0.95
SEED, EPOCHS = 0, 30
DATASET = "sklearn:load_digits"


def held_out_accuracy(net: DigitsNet, seed: int = SEED) -> float:
    """On the split's test rows; through `logits`, so a FaultyDigitsNet's faults do not count."""
    _, x_test, _, y_test = load_split(seed)
    net.eval()
    with torch.inference_mode():
        return float((net.logits(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())


def train(seed: int = SEED, epochs: int = EPOCHS) -> tuple[DigitsNet, float]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    x_train, _, y_train, _ = load_split(seed)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    net = DigitsNet()
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(net.logits(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
    return net, held_out_accuracy(net, seed)


def with_faults(net: DigitsNet, fail_rate: float, delay_ms: float) -> FaultyDigitsNet:
    faulty = FaultyDigitsNet()
    faults = {"fault_fail_rate": torch.tensor(fail_rate), "fault_delay_s": torch.tensor(delay_ms / 1000)}
    faulty.load_state_dict({**net.state_dict(), **faults}, strict=True)
    return faulty


def ensure_trained(
    out: Path = DEFAULT_OUT, force: bool = False, fail_rate: float | None = None, delay_ms: float | None = None
) -> Path:
    """Train and save the weights unless `out` already holds them; refuse to save a model below MIN_ACCURACY.

    With `fail_rate` or `delay_ms`, the weights are a FaultyDigitsNet's carrying those faults."""
    if out.exists() and not force:
        print(f"{out} exists (use --force to retrain)")
        return out
    net, accuracy = train()
    print(f"held-out accuracy: {accuracy:.4f}")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"accuracy {accuracy:.4f} is below {MIN_ACCURACY}; not saving")
    if fail_rate is not None or delay_ms is not None:
        net = with_faults(net, fail_rate or 0.0, delay_ms or 0.0)
        print(f"with injected faults: fail rate {fail_rate or 0.0}, delay {delay_ms or 0.0} ms")
    print(f"wrote {out}\nsha256: {save_weights(net, out)}")
    return out


def registrations(out: Path, options: dict[str, Any] | None = None) -> list[Registration]:
    """What `out` holds, read from the weights themselves (so weights trained before are described truly)."""
    from safetensors.torch import load_file

    state = load_file(str(out))
    net = FaultyDigitsNet() if "fault_fail_rate" in state else DigitsNet()
    net.load_state_dict(state, strict=True)
    params: dict[str, Any] = {"epochs": EPOCHS, "seed": SEED}
    tags: dict[str, Any] = {}
    if isinstance(net, FaultyDigitsNet):
        params["fail_rate"] = round(float(net.fault_fail_rate), 6)  # float32 in the weights: 0.1 -> 0.10000000149
        params["delay_ms"] = round(float(net.fault_delay_s) * 1000, 3)
        tags["faults"] = "injected"
    return [
        Registration(
            name="digits",
            path=out,
            format="safetensors",
            module=f"examples.digits.model:{type(net).__name__}",
            dataset=DATASET,
            metrics={"accuracy": round(held_out_accuracy(net), 4)},
            params=params,
            tags=tags,
        )
    ]


def _default_out(options: dict[str, Any]) -> Path:
    return DEFAULT_OUT if options["fail_rate"] is None and options["delay_ms"] is None else FAULTY_OUT


def _fraction(value: str) -> float:
    rate = float(value)
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction between 0 and 1")
    return rate


def _milliseconds(value: str) -> float:
    delay = float(value)
    if delay < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return delay


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-rate", type=_fraction, default=None, help="a faulty version: each call fails with this probability"
    )
    parser.add_argument(
        "--delay-ms", type=_milliseconds, default=None, help="a faulty version: each call sleeps this long first"
    )


def main() -> None:
    training_cli(__doc__, _default_out, ensure_trained, _options, registrations)


if __name__ == "__main__":
    main()
