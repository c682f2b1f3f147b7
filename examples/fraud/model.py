"""The fraud pipeline's models: featurizer, two scorers, the ensemble, and the per-merchant model.

The torch modules are saved as safetensors and loaded by class (format:
safetensors); the ensemble is plain numpy (format: python) because it
returns feature *names*.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from examples.fraud.data import CATEGORIES, FEATURE_NAMES

__all__ = ["Ensemble", "FraudLogistic", "FraudMLP", "Featurizer", "MerchantModel", "TOP_K"]

N_FEATURES = len(FEATURE_NAMES)
TOP_K = 3


class Featurizer(nn.Module):
    """Raw transaction fields -> standardized features [N, 16]. Its weights are the training set's statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))  # log_amount, log_distance, txn_24h
        self.register_buffer("std", torch.ones(3))

    def forward(self, amount, hour, category, distance_km, txn_24h, card_present, foreign) -> torch.Tensor:
        raw = torch.stack([torch.log1p(amount.clamp(min=0)), torch.log1p(distance_km.clamp(min=0)), txn_24h.float()], 1)
        scaled = (raw - self.mean) / self.std
        angle = (hour % 24).float() * (2 * torch.pi / 24)
        known = (category >= 0) & (category < len(CATEGORIES))  # an unknown category is "none of them", not an error
        onehot = nn.functional.one_hot(category.clamp(0, len(CATEGORIES) - 1), len(CATEGORIES)).float() * known[:, None]
        return torch.cat(
            [
                scaled[:, :1],
                ((hour % 24) < 6).float()[:, None],
                torch.sin(angle)[:, None],
                torch.cos(angle)[:, None],
                onehot,
                scaled[:, 1:],
                card_present.float()[:, None],
                foreign.float()[:, None],
            ],
            1,
        )


class FraudMLP(nn.Module):
    """features [N, 16] -> fraud score [N]: sees interactions the logistic model cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


class FraudLogistic(nn.Module):
    """features [N, 16] -> (fraud score [N], each feature's contribution to the log-odds, weight x feature [N, 16])."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_FEATURES, 1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).squeeze(1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.logits(features)), features * self.linear.weight[0]


class MerchantModel(nn.Module):
    """One merchant's own model (a multiplexed family member): raw fields -> fraud score [N]."""

    def __init__(self) -> None:
        super().__init__()
        self.featurizer = Featurizer()
        self.scorer = FraudLogistic()

    def forward(self, amount, hour, category, distance_km, txn_24h, card_present, foreign) -> torch.Tensor:
        features = self.featurizer(amount, hour, category, distance_km, txn_24h, card_present, foreign)
        return torch.sigmoid(self.scorer.logits(features))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class Ensemble:
    """Stacks the two scores (weights learned on held-out data) and names the features that drove the decision.

    format: python — built as Ensemble(artifact_path, device); the artifact holds the stacking weights.
    """

    def __init__(self, artifact_path: Path, device: str):
        from safetensors.numpy import load_file

        self.weights = load_file(str(artifact_path))["stack"]  # [w_mlp, w_lr, bias]
        self.names = np.array(FEATURE_NAMES, dtype=object)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        w_mlp, w_lr, bias = self.weights
        z = w_mlp * _logit(inputs["mlp_score"]) + w_lr * _logit(inputs["lr_score"]) + bias
        contributions = inputs["contributions"]
        top = np.argsort(-np.abs(contributions), axis=1)[:, :TOP_K]  # largest pull either way
        return {
            "fraud_probability": (1 / (1 + np.exp(-z))).astype(np.float32),
            "top_features": self.names[top],
            "top_contributions": np.take_along_axis(contributions, top, 1).astype(np.float32),
        }
