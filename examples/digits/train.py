"""Train DigitsNet on the bundled digits (seeded, CPU, seconds) and save safetensors weights.

python -m examples.digits.train [--out PATH] [--force]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from examples._artifacts import save_weights, training_cli
from examples.digits.model import DigitsNet, load_split

DEFAULT_OUT = Path(__file__).parent / "artifacts" / "digits" / "1" / "model.safetensors"
MIN_ACCURACY = 0.95


def train(seed: int = 0, epochs: int = 30) -> tuple[DigitsNet, float]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    x_train, x_test, y_train, y_test = load_split(seed)
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
    net.eval()
    with torch.inference_mode():
        accuracy = (net(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    return net, float(accuracy)


def ensure_trained(out: Path = DEFAULT_OUT, force: bool = False) -> Path:
    """Train and save the weights unless `out` already holds them; refuse to save a model below MIN_ACCURACY."""
    if out.exists() and not force:
        print(f"{out} exists (use --force to retrain)")
        return out
    net, accuracy = train()
    print(f"held-out accuracy: {accuracy:.4f}")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"accuracy {accuracy:.4f} is below {MIN_ACCURACY}; not saving")
    print(f"wrote {out}\nsha256: {save_weights(net, out)}")
    return out


def main() -> None:
    training_cli(__doc__, DEFAULT_OUT, ensure_trained)


if __name__ == "__main__":
    main()
