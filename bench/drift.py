"""Drift detection on the fraud example's inputs: false alarms in distribution, and how soon a real shift alerts.

    python -m bench.drift [--windows 500] [--runs 10] [--max-windows 20]

The reference profile is built from `examples.fraud.data.generate(20000, seed=0)` (category, card_present and
foreign categorical, hour and txn_24h numeric). Windows of 500 rows come from fresh seeds. Every window is tested
once (monitoring.drift.check_window, default settings) and judged by three decision rules on the same results:
the test alone at the Bonferroni-corrected level, PSI alone (> 0.1), and both (the default). Measured:
1. false alarms: the share of in-distribution windows flagged (goal: at most 2% over 50 windows); also with
   100-row windows (where PSI alone is noisy) and, as a shift too small to matter, amounts x1.1 in 5000-row windows
   (where the test alone flags it);
2. detection: amounts x3 for a share of the rows, and the `online` category made 2 or 3 times as likely as each
   other one; `--runs` streams of up to `--max-windows` windows each: the share of windows flagged and the number
   of windows until the first alert.
No Ray, one process; about half a minute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from examples.fraud.data import CATEGORIES, generate
from monitoring.drift import (
    DriftSettings,
    FeatureResult,
    ReferenceProfile,
    WindowResult,
    build_profile,
    check_window,
    feature_columns,
)

from ._harness import REPO, console, write_results

REFERENCE_ROWS = 20_000
CATEGORICAL = ["category"]  # card_present and foreign are BOOL: categorical anyway
Shift = Callable[[dict[str, np.ndarray], np.random.Generator], None]
Rule = Callable[[FeatureResult, DriftSettings], bool]
RULES: dict[str, Rule] = {
    "test only (Bonferroni)": lambda f, _: f.p_value < f.alpha,
    "PSI only": lambda f, s: f.psi > s.psi_threshold,
    "test AND PSI (default)": lambda f, _: f.drifted,
    "test AND PSI > 0.05": lambda f, _: f.p_value < f.alpha and f.psi > 0.05,
}
DEFAULT_RULE = "test AND PSI (default)"


@dataclass
class FalseAlarms:
    case: str
    windows: int
    window_rows: int
    flagged: dict[str, int]  # by rule


@dataclass
class Detection:
    shift: str
    feature: str  # the one shifted
    runs: int
    max_windows: int
    windows: dict[str, int] = field(default_factory=dict)  # tested, by rule (all rules see the same windows)
    flagged: dict[str, int] = field(default_factory=dict)
    first_alert: dict[str, list[int | None]] = field(default_factory=dict)  # per run: 1-based window, None: none
    named_right: int = 0  # default rule's alerts whose drifted features are exactly the shifted one
    psi: list[float] = field(default_factory=list)  # the shifted feature's, per window


def _flagged(result: WindowResult, rule: Rule, settings: DriftSettings) -> list[str]:
    return [f.feature for f in result.features if rule(f, settings)]


def _window(rows: int, seed: int, shift: Shift | None = None) -> dict[str, np.ndarray]:
    inputs, _ = generate(rows, seed)
    if shift is not None:
        shift(inputs, np.random.default_rng(seed + 7))
    return feature_columns(inputs)


def false_alarms(
    profile: ReferenceProfile, case: str, windows: int, window_rows: int, first_seed: int, shift: Shift | None = None
) -> FalseAlarms:
    settings = DriftSettings(window_rows=window_rows)
    flagged = dict.fromkeys(RULES, 0)
    for i in range(windows):
        result = check_window(profile, _window(window_rows, first_seed + i, shift), settings)
        for name, rule in RULES.items():
            flagged[name] += bool(_flagged(result, rule, settings))
    return FalseAlarms(case, windows, window_rows, flagged)


def detection(
    profile: ReferenceProfile, shift_name: str, feature: str, shift: Shift, runs: int, max_windows: int
) -> Detection:
    settings = DriftSettings()
    record = Detection(shift_name, feature, runs, max_windows)
    for name in RULES:
        record.windows[name], record.flagged[name], record.first_alert[name] = 0, 0, []
    for run in range(runs):
        first: dict[str, int | None] = dict.fromkeys(RULES)
        for w in range(max_windows):
            result = check_window(profile, _window(settings.window_rows, 100_000 + 1000 * run + w, shift), settings)
            record.psi += [f.psi for f in result.features if f.feature == feature]
            for name, rule in RULES.items():
                named = _flagged(result, rule, settings)
                record.windows[name] += 1
                record.flagged[name] += bool(named)
                if named and first[name] is None:
                    first[name] = w + 1
                if named and name == DEFAULT_RULE:
                    record.named_right += named == [feature]
        for name in RULES:
            record.first_alert[name].append(first[name])
    return record


def amounts_times(factor: float, share: float = 1.0) -> Shift:
    """Amounts `factor` times as large for `share` of the rows (picked at random)."""

    def shift(inputs: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        amount = inputs["amount"]
        rows = rng.choice(len(amount), round(share * len(amount)), replace=False)
        amount[rows] *= factor

    return shift


def online_times(factor: float) -> Shift:
    """`online` made `factor` times as likely as each other category (uniform in the reference)."""
    others = len(CATEGORIES) - 1
    target = factor / (others + factor)
    base = 1 / len(CATEGORIES)
    redraw = (target - base) / (1 - base)  # the share of rows turned online

    def shift(inputs: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        category = inputs["category"]
        category[rng.random(len(category)) < redraw] = CATEGORIES.index("online")

    return shift


def check_ms(profile: ReferenceProfile, repeats: int = 200) -> float:
    """Median time of one default 500-row window's tests."""
    settings, columns, times = DriftSettings(), _window(500, 7), []
    for _ in range(repeats):
        start = time.perf_counter()
        check_window(profile, columns, settings)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


# ---- reporting ----------------------------------------------------------------------------------------------------


def _markdown(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if i == 0 else "--:" for i in range(len(columns)))]
    lines[1] += "|"
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _share(flagged: int, windows: int) -> str:
    high = stats.binomtest(flagged, windows).proportion_ci(method="exact").high
    return f"{flagged}/{windows} = {flagged / windows:.1%} (≤ {high:.1%})"


def _first(alerts: list[int | None], max_windows: int) -> str:
    found = [a for a in alerts if a is not None]
    if not found:
        return f"none in {max_windows}"
    text = f"{statistics.mean(found):.1f} (max {max(found)})"
    return text if len(found) == len(alerts) else f"{text}; {len(alerts) - len(found)}/{len(alerts)} runs none"


def report(alarms: list[FalseAlarms], detections: list[Detection], profile: ReferenceProfile, ms: float) -> str:
    false_table = _markdown(
        ["windows", *RULES],
        [
            [f"{a.case} ({a.windows} x {a.window_rows} rows)", *(_share(a.flagged[r], a.windows) for r in RULES)]
            for a in alarms
        ],
    )
    detection_table = _markdown(
        ["shift (500-row windows)", "its PSI (median)", *RULES],
        [
            [
                d.shift,
                f"{statistics.median(d.psi):.3f}",
                *(f"{d.flagged[r] / d.windows[r]:.0%} · {_first(d.first_alert[r], d.max_windows)}" for r in RULES),
            ]
            for d in detections
        ],
    )
    named = ", ".join(
        f"{d.shift}: {d.named_right}/{d.flagged[DEFAULT_RULE]}" for d in detections if d.flagged[DEFAULT_RULE]
    )
    return (
        f"Reference: fraud generate({REFERENCE_ROWS}, seed=0), {len(profile.features)} features; default settings "
        f"(KS/chi-square p < 0.05 / {len(profile.features)} features, PSI > 0.1). Share flagged, with its exact 95% "
        "upper bound:\n\n"
        f"{false_table}\n\n"
        f"Detection: share of windows flagged · first alert (mean window number over the runs that alerted; "
        f"{detections[0].runs} runs of {detections[0].max_windows} windows):\n\n{detection_table}\n\n"
        f"Alerts of the default rule naming exactly the shifted feature: {named}.\n"
        f"One 500-row window, {len(profile.features)} features: {ms:.1f} ms (median)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=500, help="In-distribution windows (the first 50 also alone).")
    parser.add_argument("--runs", type=int, default=10, help="Streams per shift.")
    parser.add_argument("--max-windows", type=int, default=20, help="Windows per stream.")
    args = parser.parse_args()
    started = time.perf_counter()
    reference, _ = generate(REFERENCE_ROWS, seed=0)
    profile = build_profile(
        feature_columns(reference), categorical=CATEGORICAL, created_from="fraud generate(20000, 0)"
    )
    alarms = [
        false_alarms(profile, "in distribution", 50, 500, 1000),
        false_alarms(profile, "in distribution", args.windows, 500, 1000),
        false_alarms(profile, "in distribution", args.windows, 100, 50_000),
        false_alarms(profile, "amounts x1.1, too small to matter", 50, 5000, 90_000, amounts_times(1.1)),
    ]
    shifts: Iterator[tuple[str, str, Shift]] = iter(
        [
            *((f"amounts x3, {share:.0%} of rows", "amount", amounts_times(3, share)) for share in (1, 0.5, 0.2, 0.1)),
            *((f"online x{factor:g} as likely", "category", online_times(factor)) for factor in (2, 3)),
        ]
    )
    detections = [
        detection(profile, name, feature, shift, args.runs, args.max_windows) for name, feature, shift in shifts
    ]
    text = report(alarms, detections, profile, check_ms(profile))
    print(text)
    command = " ".join(["python -m bench.drift", *sys.argv[1:]])
    path = write_results(
        "drift",
        {"command": command, "args": vars(args), "false_alarms": alarms, "detections": detections, "report": text},
    )
    console.print(f"{command}: {time.perf_counter() - started:.0f} s; wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
