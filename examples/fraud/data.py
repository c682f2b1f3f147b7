"""A seeded synthetic card-transaction generator, and the feature names every part agrees on.

Fraud follows a known generative process (large amounts, night hours,
risky categories, far from home, bursts of transactions, card not present,
abroad, and night x abroad as an interaction only a non-linear model
sees), so a trained model's quality can be checked against it. A merchant
id shifts the process, giving each merchant its own model to learn.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CATEGORIES", "FEATURE_NAMES", "INPUTS", "MERCHANTS", "generate", "merchant_ids"]

CATEGORIES = ["grocery", "fuel", "restaurant", "travel", "electronics", "online", "jewelry", "atm"]
_RISKY = {"electronics": 0.8, "online": 0.7, "jewelry": 1.0, "atm": 0.5}
FEATURE_NAMES = [
    "log_amount",
    "night",
    "hour_sin",
    "hour_cos",
    *(f"category={c}" for c in CATEGORIES),
    "log_distance",
    "txn_24h",
    "card_present",
    "foreign",
]
# The raw fields a transaction carries: the request of the `fraud` pipeline and of each merchant model.
INPUTS = ["amount", "hour", "category", "distance_km", "txn_24h", "card_present", "foreign"]


def merchant_ids(count: int) -> list[str]:
    """m000, m001, ...: the ids of `count` merchants (the id's number seeds the merchant's own fraud pattern)."""
    return [f"m{i:03d}" for i in range(count)]


MERCHANTS = merchant_ids(50)  # the example app's family; `train --merchants N` makes more (bench/many_models.py)


def _merchant_shift(merchant: str | None) -> tuple[float, float]:
    """(base-rate shift, amount sensitivity) of a merchant: its own fraud pattern, seeded by its id."""
    if merchant is None:
        return 0.0, 0.9
    rng = np.random.default_rng(int(merchant.removeprefix("m")) + 1000)
    return float(rng.normal(0, 0.6)), float(rng.uniform(0.3, 1.6))


def generate(n: int, seed: int = 0, merchant: str | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(transactions as {input name: array}, fraud labels 0/1)."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 1.1, n).astype(np.float32)
    hour = rng.choice(24, n, p=_hour_weights()).astype(np.int64)
    category = rng.integers(0, len(CATEGORIES), n).astype(np.int64)
    distance = rng.exponential(12.0, n).astype(np.float32)
    txn_24h = rng.poisson(2.0, n).astype(np.int64)
    card_present = rng.random(n) < 0.7
    foreign = rng.random(n) < 0.06
    shift, amount_sensitivity = _merchant_shift(merchant)
    night = hour < 6
    risky = np.array([_RISKY.get(c, 0.0) for c in CATEGORIES])[category]
    logit = (
        -4.6
        + shift
        + amount_sensitivity * np.log(amount / 50.0)
        + 1.1 * night
        + risky
        + 0.5 * np.log1p(distance / 10.0)
        + 0.35 * (txn_24h - 2)
        - 1.0 * card_present
        + 1.3 * foreign
        + 1.8 * (night & foreign)
        + 1.2 * (~card_present & (txn_24h >= 5))
    )
    fraud = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    inputs = {
        "amount": amount,
        "hour": hour,
        "category": category,
        "distance_km": distance,
        "txn_24h": txn_24h,
        "card_present": card_present,
        "foreign": foreign,
    }
    return inputs, fraud.astype(np.int64)


def _hour_weights() -> np.ndarray:
    weights = np.array([0.3] * 6 + [1.0] * 16 + [0.6] * 2)
    return weights / weights.sum()
