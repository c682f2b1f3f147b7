"""The spec's `drift:` section: light (pydantic only), so reading a spec never imports the statistics
(monitoring/drift.py, numpy and scipy)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from groundwork.specs import Strict

__all__ = ["DriftSettings"]


class DriftSettings(Strict):
    """`drift: {...}` on a model: how its inputs are compared with its version's reference profile."""

    reference: str | None = Field(
        default=None,
        description=(
            "The reference: a profile (JSON, `python -m monitoring.drift DATA -o profile.json`) or the data itself "
            "(.csv, .jsonl, .npz), as a path relative to the spec or a storage URI (s3://, gs://, az://, https://). "
            "Required in an app spec."
        ),
    )
    window_rows: int = Field(default=500, ge=50, description="Rows per window; each full window is tested once.")
    sample_rate: float = Field(
        default=1.0, gt=0, le=1, description="Share of requests whose rows are tapped for the monitor."
    )
    features: list[str] | None = Field(
        default=None,
        description="Features to test (an input's name, or name[i] for a column of a 2-D input); default: all.",
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="Numeric features to test as categories (chi-square); BOOL and BYTES inputs always are.",
    )
    ks_p_value: float = Field(default=0.05, gt=0, lt=1, description="Significance of the KS test (numeric).")
    chi2_p_value: float = Field(default=0.05, gt=0, lt=1, description="Significance of the chi-square test.")
    psi_threshold: float = Field(default=0.1, gt=0, description="PSI (10 bins) above which a shift is large enough.")
    correction: Literal["bonferroni", "none"] = Field(
        default="bonferroni", description="Correction of the significance for testing several features at once."
    )
