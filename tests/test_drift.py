"""Drift detection (monitoring/drift.py) on the fraud example's inputs and on constructed cases. No Ray.

Windows come from examples.fraud.data with fresh seeds; the reference is its own seed 0. A shift is put in by hand
(amounts x3, a category made common) and must be named; in-distribution windows must stay quiet.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from examples.fraud.data import CATEGORIES, generate
from groundwork.specs import SpecError
from monitoring.drift import (
    DriftSettings,
    DriftWindows,
    ReferenceProfile,
    build_profile,
    check_window,
    feature_columns,
    load_reference_data,
)

ONLINE = CATEGORIES.index("online")


@pytest.fixture(scope="module")
def fraud_profile() -> ReferenceProfile:
    reference, _ = generate(20_000, seed=0)
    return build_profile(feature_columns(reference), categorical=["category"], created_from="fraud seed 0")


def _fraud_window(rows: int = 500, seed: int = 1) -> dict[str, np.ndarray]:
    inputs, _ = generate(rows, seed)
    return feature_columns(inputs)


def _normal(n: int, shift: float = 0.0) -> np.ndarray:
    """n evenly spaced quantiles of N(shift, 1): a sample with no sampling noise."""
    return stats.norm.ppf((np.arange(n) + 0.5) / n) + shift


def test_feature_columns_name_columns_of_2d_and_higher_inputs() -> None:
    columns = feature_columns(
        {
            "x": np.arange(4.0),
            "emb": np.arange(12.0).reshape(4, 3),
            "img": np.arange(16.0).reshape(4, 2, 2),
            "word": np.array(["a", "b", "a", "c"], dtype=object),
            "flag": np.array([True, False, True, True]),
        }
    )
    assert list(columns) == ["x", "emb[0]", "emb[1]", "emb[2]", "img[0]", "img[1]", "img[2]", "img[3]", "word", "flag"]
    assert columns["emb[1]"].tolist() == [1.0, 4.0, 7.0, 10.0]
    assert columns["img[3]"].tolist() == [3.0, 7.0, 11.0, 15.0]
    kinds = {name: f.kind for name, f in build_profile(columns).features.items()}
    assert kinds["word"] == kinds["flag"] == "categorical"  # BYTES and BOOL whatever the caller says
    assert kinds["x"] == kinds["emb[0]"] == "numeric"


def test_profile_holds_deciles_a_bounded_sample_and_round_trips_json(fraud_profile: ReferenceProfile) -> None:
    amount = fraud_profile.features["amount"]
    assert amount.kind == "numeric" and len(amount.sample) == 5000 and amount.count == 20_000
    assert len(amount.bin_edges) == 9 and sum(amount.bin_shares) == pytest.approx(1)
    assert all(share == pytest.approx(0.1, abs=0.002) for share in amount.bin_shares)
    txn = fraud_profile.features["txn_24h"]  # Poisson: tied deciles merge into fewer bins
    assert len(txn.bin_edges) < 9 and txn.bin_edges == sorted(set(txn.bin_edges))
    assert txn.bin_edges[0] == 0 and txn.bin_shares[0] == pytest.approx(np.exp(-2), abs=0.01)  # (-inf, 0]: P(0)
    assert fraud_profile.features["category"].categories.keys() == {str(i) for i in range(len(CATEGORIES))}
    assert set(fraud_profile.features["card_present"].categories) == {"True", "False"}
    assert fraud_profile.rows == 20_000

    again = ReferenceProfile.model_validate_json(fraud_profile.model_dump_json())
    assert again == fraud_profile
    window, settings = _fraud_window(), DriftSettings()
    assert check_window(again, window, settings) == check_window(fraud_profile, window, settings)
    reference, _ = generate(20_000, seed=0)
    assert build_profile(feature_columns(reference), categorical=["category"], created_from="fraud seed 0") == again


def test_in_distribution_windows_are_not_flagged(fraud_profile: ReferenceProfile) -> None:
    settings = DriftSettings()
    flagged = [
        seed for seed in range(1000, 1050) if check_window(fraud_profile, _fraud_window(500, seed), settings).drifted
    ]
    assert len(flagged) <= 1, f"in-distribution windows flagged: seeds {flagged}"


def test_amounts_times_three_are_flagged_on_amount(fraud_profile: ReferenceProfile) -> None:
    window = _fraud_window(500, seed=2)
    window["amount"] = window["amount"] * 3
    result = check_window(fraud_profile, window, DriftSettings())
    assert result.drifted and result.drifted_features == ["amount"]
    amount = next(f for f in result.features if f.feature == "amount")
    assert amount.test == "ks" and amount.p_value < 1e-10 and amount.psi > 0.5
    assert amount.alpha == pytest.approx(0.05 / 7)


def test_a_category_made_common_is_flagged_by_chi_square(fraud_profile: ReferenceProfile) -> None:
    window = _fraud_window(500, seed=3)
    window["category"][::2] = ONLINE
    result = check_window(fraud_profile, window, DriftSettings())
    assert result.drifted_features == ["category"]
    category = next(f for f in result.features if f.feature == "category")
    assert category.test == "chi2" and category.p_value < 1e-10 and category.psi > 0.3


def test_bonferroni_decides_a_borderline_window() -> None:
    """Ten features, one shifted just enough that its KS p-value lies between 0.05 / 10 and 0.05."""
    names = [f"f{i}" for i in range(10)]
    profile = build_profile({name: _normal(5000) for name in names})
    window = {name: _normal(300) for name in names}
    window["f0"] = _normal(300, shift=0.23)
    loose = DriftSettings(psi_threshold=0.01, correction="none")  # PSI low enough not to decide here
    plain = check_window(profile, window, loose)
    corrected = check_window(profile, window, loose.model_copy(update={"correction": "bonferroni"}))
    f0 = plain.features[0]
    assert 0.005 < f0.p_value < 0.05 and f0.psi > 0.01, f"not a borderline case: {f0}"
    assert plain.drifted_features == ["f0"] and f0.alpha == 0.05
    assert not corrected.drifted and corrected.features[0].alpha == pytest.approx(0.005)


def test_psi_threshold_keeps_a_significant_but_small_shift_quiet() -> None:
    profile = build_profile({"x": _normal(5000)})
    window = {"x": _normal(5000, shift=0.1)}  # large window: KS rejects a shift of a tenth of a sd
    small = check_window(profile, window, DriftSettings()).features[0]
    assert small.p_value < 0.05 and small.psi < 0.1 and not small.drifted
    assert check_window(profile, window, DriftSettings(psi_threshold=0.005)).drifted


def test_unseen_categories_go_to_an_other_bucket() -> None:
    rng = np.random.default_rng(0)
    profile = build_profile({"colour": rng.choice(np.array(["red", "green", "blue"], dtype=object), 3000)})
    window = rng.choice(np.array(["red", "green", "blue"], dtype=object), 500)
    window[:3] = "purple"  # a few unseen: significant, but far too small a share to matter
    few = check_window(profile, {"colour": window}, DriftSettings()).features[0]
    assert few.test == "chi2" and few.p_value < 0.05 and few.psi < 0.1 and not few.drifted
    window[:150] = "purple"
    assert check_window(profile, {"colour": window}, DriftSettings()).drifted_features == ["colour"]

    capped = build_profile(
        {"colour": rng.choice(np.array(["red", "green", "blue"], dtype=object), 3000)}, max_categories=2
    )
    assert len(capped.features["colour"].categories) == 2 and 0.3 < capped.features["colour"].other < 0.37
    assert not check_window(
        capped, {"colour": rng.choice(np.array(["red", "green", "blue"]), 500)}, DriftSettings()
    ).drifted


def test_missing_and_chosen_features(fraud_profile: ReferenceProfile) -> None:
    window = _fraud_window(500, seed=4)
    del window["foreign"]
    result = check_window(fraud_profile, window, DriftSettings())
    assert result.missing == ["foreign"] and len(result.features) == 6
    assert result.features[0].alpha == pytest.approx(0.05 / 6)  # corrected for the features tested
    chosen = check_window(fraud_profile, window, DriftSettings(features=["amount", "nope"]))
    assert [f.feature for f in chosen.features] == ["amount"] and chosen.missing == ["nope"]
    assert chosen.features[0].alpha == 0.05


def test_windows_carry_leftover_rows() -> None:
    profile = build_profile({"x": _normal(5000), "c": np.array(["a", "b"] * 500, dtype=object)})
    windows = DriftWindows(profile, DriftSettings(window_rows=100))
    shuffle = np.random.default_rng(0).permutation
    calm = {"x": shuffle(_normal(150)), "c": np.array(["a", "b"] * 75, dtype=object)}
    moved = {"x": shuffle(_normal(150, shift=3)), "c": np.array(["a", "b"] * 75, dtype=object)}
    assert windows.add({"x": calm["x"][:30], "c": calm["c"][:30]}) == [] and windows.pending_rows == 30
    first = windows.add({"x": calm["x"][30:], "c": calm["c"][30:]})
    assert [r.rows for r in first] == [100] and windows.pending_rows == 50
    later = windows.add(moved)  # rows 100..299: the 50 calm ones left over, then 150 moved
    assert [r.rows for r in later] == [100, 100] and windows.pending_rows == 0
    assert not first[0].drifted
    assert later[0].drifted_features == later[1].drifted_features == ["x"]
    ks = [r.features[0].statistic for r in later]  # half the window moved, then all of it (KS of N(3, 1): 0.87)
    assert 0.35 < ks[0] < 0.5 and ks[1] > 0.8

    windows.add({"x": shuffle(_normal(60))})  # a batch without c: those rows count as missing c
    [last] = windows.add({"x": shuffle(_normal(40)), "c": np.array(["a", "b"] * 20, dtype=object)})
    assert [f.feature for f in last.features] == ["x", "c"] and last.features[1].statistic == 0
    with pytest.raises(ValueError, match="different row counts"):
        windows.add({"x": _normal(5), "c": np.array(["a"], dtype=object)})


def test_a_window_evaluates_fast() -> None:
    columns = feature_columns({"x": np.random.default_rng(0).normal(size=(20_000, 8))})
    columns["c1"] = columns["c2"] = np.random.default_rng(1).integers(0, 8, 20_000)
    profile = build_profile(columns, categorical=["c1", "c2"])
    window = {name: values[:500] for name, values in columns.items()}
    best = min(_timed(lambda: check_window(profile, window, DriftSettings())) for _ in range(5))
    assert best < 0.05, f"a 500-row window of 10 features took {best * 1000:.0f} ms"


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# ---- reference data from files ---------------------------------------------------------------------------------------


def test_reference_from_csv_matches_live_inputs(tmp_path: Path, fraud_profile: ReferenceProfile) -> None:
    reference, _ = generate(20_000, seed=0)
    path = tmp_path / "reference.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(reference)
        writer.writerows(zip(*(values.tolist() for values in reference.values()), strict=True))
    columns = load_reference_data(path)
    assert columns["card_present"].dtype == bool and columns["category"].dtype == np.float64
    profile = build_profile(columns, categorical=["category"])
    assert profile.features["category"].categories == fraud_profile.features["category"].categories  # '3', not '3.0'
    assert profile.features["card_present"].categories == fraud_profile.features["card_present"].categories
    assert not check_window(profile, _fraud_window(500, seed=5), DriftSettings()).drifted


def test_reference_from_csv_with_words_and_gaps(tmp_path: Path) -> None:
    path = tmp_path / "reference.csv"
    path.write_text("amount,city,code\n1.5,Paris,7\n,Lyon,A1\n2.5,,7\n")
    columns = load_reference_data(path)
    assert np.isnan(columns["amount"][1]) and columns["amount"][2] == 2.5
    assert columns["city"].tolist() == ["Paris", "Lyon", None]
    assert columns["code"].tolist() == ["7", "A1", "7"]  # numbers among words stay as written
    profile = build_profile(columns)
    assert profile.features["amount"].count == 2 and profile.features["city"].categories == {"Lyon": 0.5, "Paris": 0.5}


def test_reference_from_jsonl_and_npz(tmp_path: Path) -> None:
    jsonl = tmp_path / "reference.jsonl"
    rows = [{"emb": [i, 2 * i], "word": "ab"[i % 2], "flag": i % 3 == 0, "n": i} for i in range(20)]
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    columns = load_reference_data(jsonl)
    assert list(columns) == ["emb[0]", "emb[1]", "word", "flag", "n"]
    assert columns["emb[1]"].tolist() == [2.0 * i for i in range(20)] and columns["flag"].dtype == bool
    assert columns["word"].dtype == object and columns["n"].dtype == np.float64

    npz = tmp_path / "reference.npz"
    np.savez(npz, emb=np.arange(40.0).reshape(20, 2), word=np.array(["a", "b"] * 10))
    columns = load_reference_data(npz)
    assert list(columns) == ["emb[0]", "emb[1]", "word"] and columns["emb[1]"][0] == 1.0
    assert build_profile(columns).features["word"].kind == "categorical"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("ragged.csv", "a,b\n1,2\n3\n", "line 3 has 1 cells, the header 2"),
        ("empty.csv", "", "no header row"),
        ("header_only.csv", "a,b\n", "no rows of reference data"),
        ("bad.jsonl", '{"a": 1}\n{"a": \n', "line 2 is not JSON"),
        ("list.jsonl", "[1, 2]\n", "line 1 is not a JSON object"),
        ("mixed.jsonl", '{"a": [1, 2]}\n{"a": [1]}\n', "lists of different lengths"),
        ("uneven.npz", None, "features of different lengths"),
        ("not.npz", "plain text", "cannot read it as reference data"),
        ("data.parquet", "", "expected reference data as a .csv, .jsonl or .npz file"),
    ],
)
def test_bad_reference_files_are_one_line_spec_errors(
    tmp_path: Path, name: str, content: str | None, problem: str
) -> None:
    path = tmp_path / name
    if content is None:
        np.savez(path, a=np.arange(3.0), b=np.arange(4.0))
    else:
        path.write_text(content)
    with pytest.raises(SpecError) as caught:
        load_reference_data(path)
    assert caught.value.path == str(path) and problem in caught.value.problem
    assert "\n" not in str(caught.value)


def test_a_missing_reference_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_reference_data(tmp_path / "nowhere.csv")
