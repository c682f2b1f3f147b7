"""A small CNN for scikit-learn's bundled 8x8 digits, and the seeded split everyone shares."""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from torch import nn

__all__ = ["DigitsNet", "FaultyDigitsNet", "load_split"]


class DigitsNet(nn.Module):
    """pixels [N, 64] with raw values 0..16 -> class probabilities [N, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        images = (pixels / 16.0).reshape(-1, 1, 8, 8)
        return self.head(self.features(images))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(pixels), dim=1)


class FaultyDigitsNet(DigitsNet):
    """DigitsNet gone bad on purpose, for the canary rollback tour: each call sleeps `fault_delay_s`, then fails with
    probability `fault_fail_rate`. Both are buffers saved with the weights, so the artifact itself is the bad version
    (and plain DigitsNet refuses it)."""

    fault_fail_rate: torch.Tensor
    fault_delay_s: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fault_fail_rate", torch.tensor(0.0))
        self.register_buffer("fault_delay_s", torch.tensor(0.0))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        time.sleep(float(self.fault_delay_s))
        if random.random() < float(self.fault_fail_rate):
            raise RuntimeError("injected failure (examples.digits FaultyDigitsNet)")
        return super().forward(pixels)


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_test, y_train, y_test): a stratified 80/20 split, the same everywhere."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    return train_test_split(x, digits.target, test_size=0.2, random_state=seed, stratify=digits.target)
