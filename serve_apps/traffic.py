"""Which version of a model answers a request, and which versions get a shadow copy of it.

A model serves its primary version, and may serve candidates beside it, each a deployment of its own: declared in the
spec (`candidates:`, deployed with the app) or added by a rollout (a Serve application of its own, with the weights
kept by the rollout's desk, rollout.py). A candidate answers `weight` percent of the model's requests; a shadow
candidate gets a copy of `shadow` percent of them, and its answer only feeds the comparison.

The split is random per request, or sticky (`split: sticky`, A/B tests): a request's unit (the `x-modelfleet-unit`
header, else its API key's id) falls in a fixed bucket of [0, 100) for that model, so the same unit always meets the
same version while the weights stay, and a unit that met a candidate at 5% still meets it at 25%.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["UNIT_HEADER", "ModelTraffic", "Route", "candidate_deployment", "unit_bucket"]

UNIT_HEADER = "x-modelfleet-unit"  # what a sticky split keys on (an experiment's unit: a user, a session)


def candidate_deployment(model: str, version: str) -> str:
    """The Serve deployment of a model's candidate version ('@' cannot appear in a model's name, so no clash)."""
    return f"{model}@{version}"


def unit_bucket(model: str, unit: str) -> float:
    """Where `unit` falls in [0, 100) for `model`: the same every time, and independent between models."""
    digest = hashlib.sha256(f"{model}\0{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass(frozen=True)
class Route:
    """A candidate version: the deployment that serves it (in `app`, or in this app when None) and its shares."""

    version: str
    deployment: str
    app: str | None = None
    weight: float = 0.0  # percent of the model's requests it answers
    shadow: float = 0.0  # percent of the model's requests copied to it

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "deployment": self.deployment,
            "app": self.app,
            "weight": self.weight,
            "shadow": self.shadow,
        }


@dataclass(frozen=True)
class ModelTraffic:
    """One model's split: the primary answers what no candidate's weight takes."""

    primary: str
    candidates: tuple[Route, ...] = ()
    sticky: bool = False
    _random: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        weights = sum(c.weight for c in self.candidates)
        if weights > 100 + 1e-9:
            raise ValueError(f"candidates' weights add up to {weights:g}%, more than 100%")

    def pick(self, model: str, unit: str | None) -> Route | None:
        """The candidate that answers this request, or None for the primary."""
        if not any(c.weight for c in self.candidates):
            return None
        point = unit_bucket(model, unit) if self.sticky and unit else self._random.random() * 100
        edge = 0.0
        for candidate in self.candidates:
            edge += candidate.weight
            if point < edge:
                return candidate
        return None

    def shadows(self, answering: Route | None) -> list[Route]:
        """The candidates that get a copy of this request (never the one answering it)."""
        return [
            c for c in self.candidates if c.shadow and c is not answering and self._random.random() * 100 < c.shadow
        ]

    def route(self, version: str) -> Route | None:
        """The candidate serving `version` (None: the primary's, or no such version)."""
        return next((c for c in self.candidates if c.version == version), None)

    def versions(self) -> list[str]:
        return [self.primary, *(c.version for c in self.candidates)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelTraffic:
        return cls(
            primary=str(data["primary"]),
            candidates=tuple(Route(**c) for c in data.get("candidates", ())),
            sticky=bool(data.get("sticky", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"primary": self.primary, "candidates": [c.to_dict() for c in self.candidates], "sticky": self.sticky}
