"""Train the fraud pipeline's models and the per-merchant models on synthetic data (seeded, CPU, seconds).

    python -m examples.fraud.train [--out DIR] [--force] [--merchants N] [--register]

N merchants (50 by default; bench/many_models.py asks for 1,000) train together, one logistic model each.
--register then registers the pipeline's models that have one artifact each (featurizer, scorer_mlp, scorer_lr,
ensemble; not the merchants) under their app.yaml names, with the format and module app.yaml gives them and their
held-out AUC: `modelfleet models register`, in $MODELFLEET_HOME's registry unless MODELFLEET_REGISTRY_URL says.

Writes DIR/{featurizer,scorer_mlp,scorer_lr,ensemble}/1/model.safetensors,
DIR/merchants/<id>/model.safetensors and DIR/metrics.json (held-out ROC AUC).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples._artifacts import Registration, save_weights, training_cli
from examples.fraud.data import INPUTS, MERCHANTS, generate, merchant_ids
from examples.fraud.model import N_FEATURES, Featurizer, FraudLogistic, FraudMLP, MerchantModel

DEFAULT_OUT = Path(__file__).parent / "artifacts"
APP_SPEC = Path(__file__).parent / "app.yaml"  # serves DEFAULT_OUT's models
DATASET = "synthetic:examples.fraud.data"
MIN_AUC = 0.80  # the ensemble on held-out data; below it nothing is saved


def _columns(inputs: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(inputs[name]) for name in INPUTS]


def _fit(
    logits, params, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, batch: int | None = None, seed: int = 0
) -> None:
    """Minimise binary cross-entropy of `logits(x)` against y with Adam (full batch, or minibatches of `batch`)."""
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        order = torch.randperm(len(x), generator=generator).split(batch) if batch else [slice(None)]
        for rows in order:
            optimiser.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(logits(x[rows]), y[rows]).backward()
            optimiser.step()


def _standardizer(inputs: dict[str, np.ndarray]) -> Featurizer:
    featurizer = Featurizer()
    raw = np.stack([np.log1p(inputs["amount"]), np.log1p(inputs["distance_km"]), inputs["txn_24h"]], 1)
    featurizer.mean.copy_(torch.from_numpy(raw.mean(0)).float())
    featurizer.std.copy_(torch.from_numpy(raw.std(0) + 1e-6).float())
    return featurizer


def _auc(y: torch.Tensor, score: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y.numpy(), score.detach().numpy()))


def train_pipeline(seed: int = 0) -> tuple[dict[str, torch.nn.Module | torch.Tensor], dict[str, float]]:
    """Featurizer, both scorers and the stacking weights, with each one's held-out AUC."""
    torch.manual_seed(seed)
    inputs, labels = generate(80_000, seed)
    featurizer = _standardizer(inputs)
    with torch.no_grad():
        features = featurizer(*_columns(inputs))
    y = torch.from_numpy(labels).float()
    train, stack, test = slice(0, 60_000), slice(60_000, 70_000), slice(70_000, None)

    mlp, logistic = FraudMLP(), FraudLogistic()
    _fit(mlp.logits, mlp.parameters(), features[train], y[train], steps=12, lr=3e-3, batch=256, seed=seed)
    _fit(logistic.logits, logistic.parameters(), features[train], y[train], steps=400, lr=0.05)

    with torch.no_grad():
        both = torch.stack([mlp.logits(features), logistic.logits(features)], 1)
    weights = torch.zeros(2, requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    _fit(lambda z: z @ weights + bias, [weights, bias], both[stack], y[stack], steps=500, lr=0.05)
    stacked = torch.cat([weights, bias]).detach()

    metrics = {
        "auc_mlp": _auc(y[test], both[test, 0]),
        "auc_lr": _auc(y[test], both[test, 1]),
        "auc_ensemble": _auc(y[test], both[test] @ stacked[:2] + stacked[2]),
        "fraud_rate": float(y.mean()),
    }
    models = {"featurizer": featurizer, "scorer_mlp": mlp, "scorer_lr": logistic, "ensemble": stacked}
    return models, metrics


MERCHANT_ROWS, MERCHANT_TRAIN_ROWS = 5_000, 4_000
MERCHANTS_AT_ONCE = 100  # [100, 5,000, 16] float32 features: 32 MB at a time


def train_merchants(
    merchants: list[str], featurizer: Featurizer, seed: int = 0
) -> Iterator[tuple[str, MerchantModel, float]]:
    """Each merchant's model on its own transactions (its own fraud pattern), with its held-out AUC.

    A merchant's model is a logistic regression on the shared features; many are fitted at once as one
    [merchants, features] weight (each merchant's loss depends on its own row only, and Adam's steps are
    per element, so this is the same as fitting them one by one, ~100x faster).
    """
    for start in range(0, len(merchants), MERCHANTS_AT_ONCE):
        group = merchants[start : start + MERCHANTS_AT_ONCE]
        data = [generate(MERCHANT_ROWS, seed=seed + 1 + int(m.removeprefix("m")), merchant=m) for m in group]
        with torch.no_grad():
            x = torch.stack([featurizer(*_columns(inputs)) for inputs, _ in data])
        y = torch.stack([torch.from_numpy(labels).float() for _, labels in data])
        weight = torch.zeros(len(group), N_FEATURES, requires_grad=True)
        bias = torch.zeros(len(group), requires_grad=True)

        def logits(features: torch.Tensor, weight=weight, bias=bias) -> torch.Tensor:
            return torch.einsum("gnf,gf->gn", features, weight) + bias[:, None]

        train, test = slice(0, MERCHANT_TRAIN_ROWS), slice(MERCHANT_TRAIN_ROWS, None)
        _fit(logits, [weight, bias], x[:, train], y[:, train], steps=200, lr=0.05)
        with torch.no_grad():
            held_out = logits(x[:, test])
            for i, merchant in enumerate(group):
                model = MerchantModel()
                model.featurizer.load_state_dict(featurizer.state_dict())
                model.scorer.linear.weight.copy_(weight[i][None])
                model.scorer.linear.bias.copy_(bias[i : i + 1])
                yield merchant, model, _auc(y[i, test], held_out[i])


def artifact_paths(out: Path, merchants: int = len(MERCHANTS)) -> list[Path]:
    parts = ["featurizer", "scorer_mlp", "scorer_lr", "ensemble"]
    return [out / p / "1" / "model.safetensors" for p in parts] + [
        out / "merchants" / m / "model.safetensors" for m in merchant_ids(merchants)
    ]


def ensure_trained(out: Path = DEFAULT_OUT, force: bool = False, merchants: int = len(MERCHANTS)) -> Path:
    """Train and save everything unless it is all there; refuse to save an ensemble below MIN_AUC."""
    if all(p.exists() for p in [*artifact_paths(out, merchants), out / "metrics.json"]) and not force:
        print(f"{out} holds the fraud models (use --force to retrain)")
        return out
    models, metrics = train_pipeline()
    print("held-out ROC AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("auc")))
    if metrics["auc_ensemble"] < MIN_AUC:
        raise SystemExit(f"ensemble AUC {metrics['auc_ensemble']:.3f} is below {MIN_AUC}; not saving")
    for name, model in models.items():
        save_weights(
            {"stack": model} if isinstance(model, torch.Tensor) else model, out / name / "1" / "model.safetensors"
        )
    merchant_aucs = {}
    for merchant, model, merchant_aucs[merchant] in train_merchants(merchant_ids(merchants), models["featurizer"]):
        save_weights(model, out / "merchants" / merchant / "model.safetensors")
    metrics["auc_merchants_median"] = float(np.median(list(merchant_aucs.values())))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"wrote {len(artifact_paths(out, merchants))} models under {out} (merchant AUC median "
        f"{metrics['auc_merchants_median']:.3f})"
    )
    return out


AUC_OF = {"scorer_mlp": "auc_mlp", "scorer_lr": "auc_lr", "ensemble": "auc_ensemble"}  # in metrics.json


def registrations(out: Path, options: dict[str, Any] | None = None) -> list[Registration]:
    """The models app.yaml serves from one artifact each, found under `out` where app.yaml finds them under
    DEFAULT_OUT; the per-merchant family (one artifact per merchant) is left out."""
    from serve_apps.spec import load_app_spec

    app = load_app_spec(APP_SPEC)
    metrics = json.loads((out / "metrics.json").read_text())
    found = []
    for model in app.models:
        if model.artifact is None or model.multiplex is not None:
            continue
        weights = out / (app.base_dir / model.artifact.uri).resolve().relative_to(DEFAULT_OUT.resolve())
        auc = {"auc": round(metrics[AUC_OF[model.name]], 4)} if model.name in AUC_OF else {}
        found.append(
            Registration(
                name=model.name,
                path=weights,
                format=model.format.value,
                module=model.module,
                dataset=DATASET,
                metrics=auc,
            )
        )
    return found


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--merchants", type=int, default=len(MERCHANTS), help="how many per-merchant models (m000, m001, ...)"
    )


def main() -> None:
    training_cli(__doc__, DEFAULT_OUT, ensure_trained, _options, registrations)


if __name__ == "__main__":
    main()
