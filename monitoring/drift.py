"""Drift detection: a model's inputs compared with a reference profile of its training data (the spec's `drift:`).

A reference profile keeps, per input feature, what its test needs: numeric features a seeded subsample of at most
5000 reference values (two-sample KS) and the reference's share in each of 10 decile bins (PSI); categorical ones
(BOOL and BYTES inputs always, others when the spec says so) the share of each category (chi-square goodness of fit
and PSI). Each window of `window_rows` rows is tested once per feature, at a significance corrected by Bonferroni for
the number of features tested, and a feature drifts only when its test rejects AND its PSI exceeds the threshold:
significance alone flags shifts too small to matter once windows are large, and PSI alone is noisy in small ones
(docs/drift.md has the measurements).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from groundwork.specs import SpecError, Strict

from .drift_spec import DriftSettings

__all__ = [
    "DriftSettings",
    "DriftWindows",
    "FeatureProfile",
    "FeatureResult",
    "ReferenceProfile",
    "WindowResult",
    "build_profile",
    "check_window",
    "feature_columns",
    "load_reference",
    "load_reference_data",
]

PSI_BINS = 10
EPSILON = 1e-4  # the share given to an empty bin (as Evidently does), so PSI stays finite
_CATEGORICAL_KINDS = "bOUS"  # BOOL, BYTES/str (object, unicode, bytes): categories whatever the spec says


# ---- features ------------------------------------------------------------------------------------------------------


def feature_columns(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{feature: 1-D array}: a [-1] input is one feature named as the input, a [-1, k] input the features
    name[0]..name[k-1] (higher ranks are flattened after the first axis)."""
    columns: dict[str, np.ndarray] = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.ndim <= 1:
            columns[name] = array.reshape(-1)
            continue
        flat = array.reshape(array.shape[0], -1)
        for i in range(flat.shape[1]):
            columns[f"{name}[{i}]"] = flat[:, i]
    return columns


def _is_categorical(values: np.ndarray) -> bool:
    return values.dtype.kind in _CATEGORICAL_KINDS


def _numbers(feature: str, values: np.ndarray) -> np.ndarray:
    """The finite values as float64 (missing, NaN and infinite ones dropped)."""
    if values.dtype.kind == "O":
        values = np.array([np.nan if v is None else v for v in values.tolist()], dtype=object)
    try:
        numbers = values.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"feature {feature!r} is numeric in the reference profile but has non-numeric values"
        ) from None
    return numbers[np.isfinite(numbers)]


def _label(value: Any) -> str | None:
    """A category's name as the profile stores it: 3, 3.0 and '3' are one category; True is 'True'."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def _category_counts(values: np.ndarray) -> Counter[str]:
    counts: Counter[str] = Counter()
    if values.dtype.kind == "O":
        counts.update(label for label in map(_label, values.tolist()) if label is not None)
        return counts
    uniques, numbers = np.unique(values, return_counts=True)  # vectorized: window labels cost per category, not row
    for value, count in zip(uniques.tolist(), numbers.tolist(), strict=True):
        label = _label(value)
        if label is not None:
            counts[label] += int(count)
    return counts


def _bin_shares(numbers: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares in the bins (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    counts = np.bincount(np.searchsorted(edges, numbers, side="left"), minlength=len(edges) + 1)
    return counts / max(len(numbers), 1)


def _psi(actual: np.ndarray, expected: np.ndarray) -> float:
    actual, expected = np.clip(actual, EPSILON, None), np.clip(expected, EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


# ---- the reference profile -----------------------------------------------------------------------------------------


class FeatureProfile(Strict):
    """What one feature's test needs from the reference."""

    kind: Literal["numeric", "categorical"]
    count: int = Field(ge=1, description="Reference values of this feature (missing ones not counted).")
    sample: list[float] = Field(default_factory=list, description="Numeric: a seeded subsample, for the KS test.")
    bin_edges: list[float] = Field(
        default_factory=list, description="Numeric: the reference's deciles (ties merged); the outer bins are open."
    )
    bin_shares: list[float] = Field(default_factory=list, description="Numeric: the reference's share per bin.")
    categories: dict[str, float] = Field(default_factory=dict, description="Categorical: share per category.")
    other: float = Field(
        default=0.0, ge=0, le=1, description="Categorical: share of the categories not kept (beyond max_categories)."
    )

    @model_validator(mode="after")
    def _complete(self) -> FeatureProfile:
        if self.kind == "numeric" and (not self.sample or len(self.bin_shares) != len(self.bin_edges) + 1):
            raise ValueError("a numeric feature needs a sample and one more bin share than bin edges")
        if self.kind == "categorical" and not self.categories:
            raise ValueError("a categorical feature needs at least one category")
        return self

    @cached_property  # not a field: equality and JSON ignore it
    def arrays(self) -> tuple[np.ndarray, ...]:
        """Numeric: (sample, bin edges, bin shares); categorical: (share per category,), as arrays made once."""
        if self.kind == "numeric":
            return np.array(self.sample), np.array(self.bin_edges), np.array(self.bin_shares)
        return (np.array(list(self.categories.values())),)


class ReferenceProfile(Strict):
    """A model version's reference: per input feature, the statistics its drift test needs (stored as JSON)."""

    rows: int = Field(ge=1, description="Rows of the reference data.")
    created_from: str = Field(default="", description="Where the reference data came from (a file, a dataset).")
    features: dict[str, FeatureProfile]


def build_profile(
    columns: Mapping[str, np.ndarray],
    categorical: Iterable[str] = (),
    max_sample: int = 5000,
    seed: int = 0,
    created_from: str = "",
    max_categories: int = 100,
) -> ReferenceProfile:
    """The profile of reference data given as {feature: 1-D array} (see `feature_columns`); `categorical` names the
    numeric features to treat as categories. Deterministic for a given seed."""
    as_categories, features, rows = set(categorical), {}, 0
    for name, raw in columns.items():
        values = np.asarray(raw).reshape(-1)
        rows = max(rows, len(values))
        if name in as_categories or _is_categorical(values):
            counts = _category_counts(values)
            total = sum(counts.values())
            if not total:
                raise ValueError(f"reference feature {name!r} has no values")
            kept = dict(counts.most_common(max_categories))
            features[name] = FeatureProfile(
                kind="categorical",
                count=total,
                categories={label: n / total for label, n in sorted(kept.items())},
                other=(total - sum(kept.values())) / total,
            )
            continue
        numbers = _numbers(name, values)
        if not len(numbers):
            raise ValueError(f"reference feature {name!r} has no finite values")
        sample = numbers
        if len(numbers) > max_sample:
            sample = np.random.default_rng(seed).choice(numbers, max_sample, replace=False)
        edges = np.unique(np.quantile(numbers, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
        features[name] = FeatureProfile(
            kind="numeric",
            count=len(numbers),
            sample=np.sort(sample).tolist(),
            bin_edges=edges.tolist(),
            bin_shares=_bin_shares(numbers, edges).tolist(),
        )
    if not rows:
        raise ValueError("the reference data has no rows")
    return ReferenceProfile(rows=rows, created_from=created_from, features=features)


# ---- reference data from a file --------------------------------------------------------------------------------------


def load_reference_data(path: Path | str) -> dict[str, np.ndarray]:
    """{feature: 1-D array} from a .csv (a header row of names), .jsonl (one object per row) or .npz file."""
    path = Path(path)
    readers = {".csv": _read_csv, ".jsonl": _read_jsonl, ".npz": _read_npz}
    if path.suffix.lower() not in readers:
        raise SpecError(path, "", "expected reference data as a .csv, .jsonl or .npz file; convert it to one of these")
    if not path.is_file():
        raise SpecError(path, "", "no such file; check the path of the reference data")
    try:
        columns = readers[path.suffix.lower()](path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SpecError(path, "", f"cannot read it as reference data ({exc}); fix or regenerate the file") from None
    lengths = {name: len(values) for name, values in columns.items()}
    if not lengths or not max(lengths.values()):
        raise SpecError(path, "", "no rows of reference data; write one row per example under a header of names")
    if len(set(lengths.values())) > 1:
        raise SpecError(path, "", f"features of different lengths ({lengths}); give every feature one value per row")
    return columns


def _column(values: Sequence[Any]) -> np.ndarray:
    """One feature's values (None for missing) as an array: float if all are numbers, bool if all are booleans
    (and none missing), else categories (object)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return np.array(values, dtype=bool if len(present) == len(values) else object)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.array([v if v is None or isinstance(v, str) else str(v) for v in values], dtype=object)


def _csv_column(cells: list[str]) -> np.ndarray:
    """Numbers as floats, true/false as booleans, anything else as written (a column of numbers and words is all
    words: '3', not '3.0'); an empty cell is missing."""
    texts = [cell.strip() or None for cell in cells]
    if all(t is None or t.lower() in ("true", "false") for t in texts):
        return _column([None if t is None else t.lower() == "true" for t in texts])
    try:
        return _column([None if t is None else float(t) for t in texts])
    except ValueError:
        return _column(texts)


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if not header:
            raise ValueError("no header row of feature names")
        cells: list[list[str]] = [[] for _ in header]
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"line {reader.line_num} has {len(row)} cells, the header {len(header)}")
            for column, text in zip(cells, row, strict=True):
                column.append(text)
    return {name.strip(): _csv_column(column) for name, column in zip(header, cells, strict=True)}


def _read_jsonl(path: Path) -> dict[str, np.ndarray]:
    rows = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number} is not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"line {number} is not a JSON object of feature: value")
            rows.append(row)
    columns: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(name for row in rows for name in row):
        values = [row.get(name) for row in rows]
        widths = {len(v) for v in values if isinstance(v, list)}
        if not widths:
            columns[name] = _column(values)
            continue
        if len(widths) > 1 or any(v is not None and not isinstance(v, list) for v in values):
            raise ValueError(f"{name!r} holds lists of different lengths, or lists and single values")
        width = widths.pop()
        for i in range(width):  # a [-1, k] input, one list per row: name[0]..name[k-1], as feature_columns names them
            columns[f"{name}[{i}]"] = _column([None if v is None else v[i] for v in values])
    return columns


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:  # no pickles: a data file must not run code
        return feature_columns({name: archive[name] for name in archive.files})


# ---- windows ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureResult:
    feature: str
    test: Literal["ks", "chi2"]
    statistic: float
    p_value: float
    psi: float
    drifted: bool
    alpha: float  # the significance the p-value was held to (corrected)


@dataclass(frozen=True)
class WindowResult:
    rows: int
    features: list[FeatureResult]
    drifted: bool
    drifted_features: list[str]
    missing: list[str] = field(default_factory=list)  # features to test that the window had no values of


def check_window(profile: ReferenceProfile, columns: Mapping[str, np.ndarray], settings: DriftSettings) -> WindowResult:
    """Each feature of a window of {feature: 1-D array} tested against the profile (see the module's docstring)."""
    names = settings.features if settings.features is not None else list(profile.features)
    present: dict[str, np.ndarray] = {}
    missing = []
    for name in names:
        reference = profile.features.get(name)
        values = None if reference is None or name not in columns else np.asarray(columns[name]).reshape(-1)
        if values is not None and reference is not None and reference.kind == "numeric":
            values = _numbers(name, values)
        if values is None or not len(values):
            missing.append(name)
        else:
            present[name] = values
    tests = max(len(present), 1) if settings.correction == "bonferroni" else 1
    results = []
    for name, values in present.items():
        reference = profile.features[name]
        if reference.kind == "numeric":
            results.append(_numeric(name, reference, values, settings.ks_p_value / tests, settings.psi_threshold))
        else:
            results.append(_categorical(name, reference, values, settings.chi2_p_value / tests, settings.psi_threshold))
    rows = max((len(np.asarray(v).reshape(-1)) for v in columns.values()), default=0)
    drifted = [r.feature for r in results if r.drifted]
    return WindowResult(rows, results, bool(drifted), drifted, missing)


def _numeric(name: str, reference: FeatureProfile, numbers: np.ndarray, alpha: float, psi_max: float) -> FeatureResult:
    from scipy import stats  # here, not at the top: every replica imports this module, and scipy.stats costs 0.6 s

    sample, edges, shares = reference.arrays
    ks = stats.ks_2samp(numbers, sample)
    psi = _psi(_bin_shares(numbers, edges), shares)
    p_value = float(ks.pvalue)
    return FeatureResult(name, "ks", float(ks.statistic), p_value, psi, p_value < alpha and psi > psi_max, alpha)


def _categorical(
    name: str, reference: FeatureProfile, values: np.ndarray, alpha: float, psi_max: float
) -> FeatureResult:
    counts = _category_counts(values)
    observed = [counts.pop(label, 0) for label in reference.categories]
    expected = reference.arrays[0]
    unseen = sum(counts.values())  # categories the reference has not kept: one "other" bucket
    if unseen or reference.other:
        observed.append(unseen)
        expected = np.append(expected, max(reference.other, EPSILON))
    observed_counts = np.array(observed, dtype=np.float64)
    total = observed_counts.sum()
    expected = expected / expected.sum()
    if len(observed_counts) < 2:  # one category, none other: nothing can differ
        return FeatureResult(name, "chi2", 0.0, 1.0, 0.0, False, alpha)
    from scipy import stats

    chi2 = stats.chisquare(observed_counts, expected * total)
    psi = _psi(observed_counts / total, expected)
    p_value = float(chi2.pvalue)
    return FeatureResult(name, "chi2", float(chi2.statistic), p_value, psi, p_value < alpha and psi > psi_max, alpha)


class DriftWindows:
    """Rows in, one result per full window out: rows left over wait for the next `add` (fewer than a window's)."""

    def __init__(self, profile: ReferenceProfile, settings: DriftSettings):
        self.profile, self.settings = profile, settings
        self._names = settings.features if settings.features is not None else list(profile.features)
        self._chunks: list[tuple[int, dict[str, np.ndarray]]] = []
        self.pending_rows = 0

    def add(self, columns: Mapping[str, np.ndarray]) -> list[WindowResult]:
        """Append rows given as {feature: 1-D array} (features not profiled are ignored); a result per completed
        window."""
        kept = {name: np.asarray(columns[name]).reshape(-1) for name in self._names if name in columns}
        lengths = {len(values) for values in kept.values()}
        if len(lengths) > 1:
            raise ValueError(f"features of one batch have different row counts: {sorted(lengths)}")
        rows = lengths.pop() if lengths else 0
        if not rows:
            return []
        self._chunks.append((rows, kept))
        self.pending_rows += rows
        size = self.settings.window_rows
        if self.pending_rows < size:
            return []
        merged = self._merge()
        results, start = [], 0
        while self.pending_rows - start >= size:
            window = {name: values[start : start + size] for name, values in merged.items()}
            results.append(check_window(self.profile, window, self.settings))
            start += size
        self.pending_rows -= start
        self._chunks = [(self.pending_rows, {n: v[start:] for n, v in merged.items()})] if self.pending_rows else []
        return results

    def _merge(self) -> dict[str, np.ndarray]:
        """The pending rows per feature; a batch without a feature counts as that many missing values."""
        merged = {}
        for name in self._names:
            if not any(name in chunk for _, chunk in self._chunks):
                continue
            parts = [chunk.get(name, _missing(self.profile.features.get(name), rows)) for rows, chunk in self._chunks]
            merged[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return merged


def _missing(reference: FeatureProfile | None, rows: int) -> np.ndarray:
    if reference is not None and reference.kind == "numeric":
        return np.full(rows, np.nan)
    return np.full(rows, None, dtype=object)


def load_reference(path: Path | str, settings: DriftSettings) -> ReferenceProfile:
    """The reference profile in `path`: a profile's JSON as it is, else data (.csv, .jsonl, .npz) profiled here."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            return ReferenceProfile.model_validate_json(path.read_bytes())
        except ValueError as exc:
            raise SpecError(
                path,
                "",
                f"not a reference profile ({str(exc).splitlines()[0]}); make one with "
                "`python -m monitoring.drift DATA -o profile.json`",
            ) from None
    return build_profile(load_reference_data(path), categorical=settings.categorical, created_from=str(path))


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m monitoring.drift DATA [-o profile.json] [--categorical NAME ...]`: a reference profile from data."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m monitoring.drift", description=main.__doc__)
    parser.add_argument("data", type=Path, help="Reference data: .csv (a header row), .jsonl or .npz.")
    parser.add_argument("-o", "--output", type=Path, help="Where to write the profile (default: stdout).")
    parser.add_argument("--categorical", nargs="*", default=[], help="Numeric features to test as categories.")
    args = parser.parse_args(argv)
    try:
        profile = build_profile(
            load_reference_data(args.data), categorical=args.categorical, created_from=args.data.name
        )
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    text = profile.model_dump_json()
    if args.output is None:
        print(text)
    else:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
