"""Service level objectives per model: the spec's `slo:` section (rules and reports are built on it)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from groundwork.specs import Strict

__all__ = ["LATENCY_QUANTILES", "SloSpec", "window_seconds"]

LATENCY_QUANTILES = ("p50", "p90", "p95", "p99")
_WINDOW = re.compile(r"^([1-9][0-9]*)(m|h|d|w)$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def window_seconds(window: str) -> int:
    """'30d' -> 2592000: a Prometheus-style duration of one unit (m, h, d, w)."""
    match = _WINDOW.match(window)
    if match is None:
        raise ValueError(f"expected a duration like 28d, 4w or 12h, got {window!r}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


class SloSpec(Strict):
    """`slo: {availability: 99.9, latency_ms: {p95: 100}, window: 30d}`: what a model promises its callers."""

    availability: float | None = Field(
        default=None,
        gt=0,
        lt=100,
        description="Percent of requests answered without a server error (5xx or 429) over the window, e.g. 99.9.",
    )
    latency_ms: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Latency objectives by quantile (p50, p90, p95 or p99): e.g. {p95: 100} means 95% of requests are answered "
            "within 100 ms over the window."
        ),
    )
    window: str = Field(default="30d", description="The compliance window (28d, 30d, 4w, 7d...); at least 1h.")

    @field_validator("latency_ms")
    @classmethod
    def _known_quantiles(cls, value: dict[str, float]) -> dict[str, float]:
        for quantile, ms in value.items():
            if quantile not in LATENCY_QUANTILES:
                raise ValueError(f"unknown quantile {quantile!r}: use one of {', '.join(LATENCY_QUANTILES)}")
            if not ms > 0:
                raise ValueError(f"latency_ms.{quantile} must be a positive number of milliseconds, got {ms!r}")
        return value

    @field_validator("window")
    @classmethod
    def _a_window(cls, value: str) -> str:
        if window_seconds(value) < 3600:
            raise ValueError(f"window {value!r} is too short for burn-rate alerts: use at least 1h (30d is usual)")
        return value

    def latency_targets(self) -> dict[str, tuple[float, float]]:
        """{quantile: (share of requests within the bound, bound in seconds)}, e.g. {'p95': (0.95, 0.1)}."""
        return {q: (int(q[1:]) / 100, ms / 1000) for q, ms in self.latency_ms.items()}
