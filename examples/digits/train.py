"""Train DigitsNet on the bundled digits (seeded, CPU, seconds) and save safetensors weights.

    python -m examples.digits.train [--out PATH] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

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


def save_atomically(net: DigitsNet, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def ensure_trained(out: Path = DEFAULT_OUT, force: bool = False) -> Path:
    """Train and save the weights unless `out` already holds them; refuse to save a model below MIN_ACCURACY."""
    if out.exists() and not force:
        print(f"{out} exists (use --force to retrain)")
        return out
    net, accuracy = train()
    print(f"held-out accuracy: {accuracy:.4f}")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"accuracy {accuracy:.4f} is below {MIN_ACCURACY}; not saving")
    print(f"wrote {out}\nsha256: {save_atomically(net, out)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="retrain even if the weights exist")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ensure_trained(args.out, args.force)


if __name__ == "__main__":
    main()
