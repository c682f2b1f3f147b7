"""Load-test reports: the files they write, an offline self-contained page, and that a real browser draws it.

The records are synthetic (this tests rendering, not measurement). The browser
check opens each page from disk in Debian's Chromium with every non-file
request blocked, so a page that needed a CDN or threw a script error fails here.
"""

from __future__ import annotations

import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest

from loadtests._figures import run_figures
from loadtests.records import (
    EndpointResult,
    ModelKnobs,
    ReplicaPoint,
    ResourcePoint,
    RunConfig,
    RunRecord,
    StageResult,
    TimePoint,
    Trial,
    TuneRecord,
)
from loadtests.report import render_run_html, render_tune_html, write_run_report, write_tune_report
from tests.fixtures.browser import RUN_PLOTS, assert_drawn

XSS = "<script>alert(1)</script>"
PLOTLYJS_BANNER = "* plotly.js v"
KNOBS = ["max_ongoing_requests", "max_batch_size", "batch_wait_timeout_s", "replicas", "embedded"]


def _config(**overrides) -> RunConfig:
    values = dict(
        url="http://127.0.0.1:8000",
        app="fleet",
        shape="steps",
        users=20,
        spawn_rate=10.0,
        duration_s=20.0,
        protocol="json",
        rows_per_request=1,
        endpoints={"digits": 3.0, "fraud": 1.0},
        started_at="2025-06-01T12:00:00Z",
    )
    return RunConfig(**(values | overrides))


def full_run() -> RunRecord:
    """20 s in two steps of 10 and 20 users, two models, autoscaling replicas, one (hostile) warning."""
    timeline = [
        TimePoint(
            t_s=float(t),
            users=10 if t < 10 else 20,
            rps=95.0 + 5 * math.sin(t) + (90 if t >= 10 else 0),
            failures_per_s=1.0 if t == 12 else 0.0,
            p50_ms=8.0 + t * 0.2,
            p95_ms=20.0 + t * 0.5,
            p99_ms=35.0 + t,
        )
        for t in range(20)
    ]
    stages = [
        StageResult(
            users=10, start_s=0, end_s=10, requests=960, failures=0, rps=96.0, p50_ms=9.0, p95_ms=22.0, p99_ms=38.0
        ),
        StageResult(
            users=20, start_s=10, end_s=20, requests=1850, failures=1, rps=185.0, p50_ms=11.0, p95_ms=29.0, p99_ms=50.0
        ),
    ]
    endpoints = [
        EndpointResult(
            name="digits",
            requests=2108,
            failures=1,
            rps=105.4,
            p50_ms=9.5,
            p95_ms=25.0,
            p99_ms=44.0,
            server_requests=2108,
            mean_batch_rows=6.3,
        ),
        EndpointResult(name="fraud", requests=702, failures=0, rps=35.1, p50_ms=10.1, p95_ms=27.5, p99_ms=47.0),
    ]
    replicas = [  # digits and fraud coincide at 1 replica for the first 8 s
        ReplicaPoint(t_s=float(t), replicas={"digits": 1 if t < 8 else 2 if t < 14 else 3, "fraud": 1})
        for t in range(0, 20, 2)
    ]
    resources = [
        ResourcePoint(
            t_s=float(t), server_cpu_cores=1.2 + t * 0.05, server_memory_mb=900 + t * 3, generator_cpu_cores=0.4
        )
        for t in range(20)
    ]
    return RunRecord(
        config=_config(),
        duration_s=20.1,
        requests=2810,
        failures=1,
        failures_by_kind={"HTTP 500": 1},
        rps=140.5,
        p50_ms=10.2,
        p90_ms=22.0,
        p95_ms=26.4,
        p99_ms=45.3,
        errors={"digits: HTTPError 500 <b>boom</b>": 1},
        endpoints=endpoints,
        stages=stages,
        timeline=timeline,
        replicas=replicas,
        resources=resources,
        generator_cpu_cores=0.4,
        server_cpu_cores=1.7,
        server_memory_mb=957.0,
        server_requests=2810,
        warnings=[f"the load generator used 0.95 cores: it may have measured itself {XSS}"],
    )


def bare_url_run() -> RunRecord:
    """A run against someone else's URL: no replicas, no server CPU, one stage, a second without answers."""
    timeline = [
        TimePoint(
            t_s=float(t),
            users=5,
            rps=40.0 if t != 3 else 0.0,
            failures_per_s=0.0,
            p50_ms=None if t == 3 else 12.0,
            p95_ms=None if t == 3 else 30.0,
            p99_ms=None if t == 3 else 41.0,
        )
        for t in range(8)
    ]
    return RunRecord(
        config=_config(
            url="https://models.example.com",
            app=None,
            shape="constant",
            users=5,
            duration_s=8.0,
            endpoints={"digits": 1.0},
        ),
        duration_s=8.0,
        requests=280,
        rps=35.0,
        p50_ms=12.0,
        p95_ms=30.0,
        p99_ms=41.0,
        endpoints=[EndpointResult(name="digits", requests=280, rps=35.0, p50_ms=12.0, p95_ms=30.0, p99_ms=41.0)],
        stages=[
            StageResult(users=5, start_s=0, end_s=8, requests=280, rps=35.0, p50_ms=12.0, p95_ms=30.0, p99_ms=41.0)
        ],
        timeline=timeline,
        resources=[ResourcePoint(t_s=float(t), generator_cpu_cores=0.2) for t in range(8)],
        generator_cpu_cores=0.2,
    )


def empty_run() -> RunRecord:
    return RunRecord(config=_config(app=None, endpoints={}, started_at=""), duration_s=0.0)


def _knobs(ongoing: int, batch: int | None, replicas: int) -> dict[str, ModelKnobs]:
    digits = ModelKnobs(
        max_ongoing_requests=ongoing,
        max_batch_size=batch,
        batch_wait_timeout_s=0.01 if batch else None,
        replicas=replicas,
    )
    return {"digits": digits, "fraud": ModelKnobs(max_ongoing_requests=8, replicas=1)}


def _sweep(*points: tuple[int, float, float]) -> list[StageResult]:
    return [
        StageResult(users=u, start_s=i * 10, end_s=i * 10 + 10, requests=int(rps * 10), rps=rps, p95_ms=p95)
        for i, (u, rps, p95) in enumerate(points)
    ]


def tune_record() -> TuneRecord:
    trials = [
        Trial(
            number=0,
            knobs=_knobs(5, None, 1),
            baseline=True,
            stages=_sweep((4, 80, 20), (8, 110, 45), (16, 120, 95)),
            best_rps=110,
            best_p95_ms=45,
            best_users=8,
        ),
        Trial(number=1, knobs=_knobs(16, 32, 4), error="deployment failed: replicas did not start <in 60 s>"),
        Trial(
            number=2,
            knobs=_knobs(16, 16, 2),
            stages=_sweep((4, 90, 12), (8, 170, 21), (16, 260, 38), (32, 290, 80)),
            best_rps=260,
            best_p95_ms=38,
            best_users=16,
        ),
        Trial(
            number=3,
            knobs=_knobs(8, 8, 2),
            stages=_sweep((4, 85, 15), (8, 150, 30), (16, 200, 62)),
            best_rps=150,
            best_p95_ms=30,
            best_users=8,
        ),
    ]
    return TuneRecord(
        app="fleet",
        slo_p95_ms=50.0,
        max_trials=8,
        trials=trials,
        best=2,
        stopped_because="two trials in a row gained less than 5%",
        tuned_spec="fleet.tuned.yaml",
        summary="digits with 2 replicas and batches of 16 serves 260 requests/s within p95 50 ms, 2.4x the spec's 110.",
    )


def all_failed_tune() -> TuneRecord:
    trials = [
        Trial(number=n, knobs=_knobs(4, None, 1), baseline=n == 0, error=f"trial {n} did not deploy") for n in range(2)
    ]
    return TuneRecord(app="fleet", slo_p95_ms=50.0, max_trials=2, trials=trials, stopped_because="max trials reached")


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, tuple[Path, dict[str, str]]]:
    """Page name -> (index.html, plot id -> what it must draw: "scatter", "bar", "svg" (axes only) or "note")."""
    root = tmp_path_factory.mktemp("reports")
    full = {plot: "scatter" for plot in RUN_PLOTS}
    return {
        "run": (write_run_report(full_run(), root / "run"), full),
        "bare": (write_run_report(bare_url_run(), root / "bare"), full | {"plot-replicas": "note"}),
        "empty-run": (
            write_run_report(empty_run(), root / "empty-run"),
            {"plot-throughput": "svg", "plot-latency": "svg", "plot-replicas": "note", "plot-cpu": "svg"},
        ),
        "tune": (
            write_tune_report(tune_record(), root / "tune", best_run=full_run()),
            {"plot-tradeoff": "scatter", "plot-trials": "bar"} | {f"best-{plot}": "scatter" for plot in RUN_PLOTS},
        ),
        "empty-tune": (
            write_tune_report(TuneRecord(app="fleet", slo_p95_ms=50.0, max_trials=4), root / "empty-tune"),
            {"plot-tradeoff": "svg", "plot-trials": "svg"},
        ),
        "failed-tune": (
            write_tune_report(all_failed_tune(), root / "failed-tune"),
            {"plot-tradeoff": "svg", "plot-trials": "scatter"},
        ),
    }


def test_run_report_files(pages):
    record = full_run()
    index = pages["run"][0]
    assert index.name == "index.html" and index.stat().st_size > 0
    summary = json.loads((index.parent / "summary.json").read_text())
    for key in ["rps", "p50_ms", "p95_ms", "p99_ms", "requests", "failures"]:
        assert summary[key] == getattr(record, key), key
    assert RunRecord.model_validate(summary) == record


def test_tune_report_files(pages):
    record = tune_record()
    directory = pages["tune"][0].parent
    assert (directory / "index.html").is_file()
    assert TuneRecord.model_validate_json((directory / "tune.json").read_text()) == record
    with (directory / "trials.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["number"]) for row in rows] == [t.number for t in record.trials]
    knob_columns = [f"{model}.{knob}" for model in ["digits", "fraud"] for knob in KNOBS]
    assert list(rows[0]) == ["number", "baseline", "best_rps", "best_p95_ms", "best_users", "error", *knob_columns]
    assert rows[0]["baseline"] == "True" and rows[1]["error"].startswith("deployment failed")
    assert rows[2]["digits.max_batch_size"] == "16" and rows[2]["digits.replicas"] == "2"
    assert rows[0]["digits.max_batch_size"] == "" and float(rows[2]["best_rps"]) == 260


class _Resources(HTMLParser):
    """Every start tag that could load something; script bodies (plotly.js included) are data, not tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.mark.parametrize("name", ["run", "bare", "empty-run", "tune", "empty-tune", "failed-tune"])
def test_page_is_self_contained(pages, name):
    html = pages[name][0].read_text()
    assert html.count(PLOTLYJS_BANNER) == 1
    parser = _Resources()
    parser.feed(html)
    assert parser.tags, "no tags parsed"
    for tag, attrs in parser.tags:
        assert not (tag == "script" and "src" in attrs), attrs
        assert tag not in {"link", "img", "iframe", "object", "embed"}, (tag, attrs)
        for attr in ("src", "href"):
            value = (attrs.get(attr) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    for plot_id in pages[name][1]:
        assert f'<div id="{plot_id}" class="plot">' in html


def test_html_is_escaped():
    html = render_run_html(full_run())
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;boom&lt;/b&gt;" in html
    tune = render_tune_html(tune_record())
    assert "replicas did not start &lt;in 60 s&gt;" in tune
    assert 'href="fleet.tuned.yaml"' in tune
    assert "2.4x the spec" in tune


def test_missing_values_render():
    html = render_run_html(bare_url_run())
    assert "replica counts are recorded when loadtest starts the app itself" in html.lower()
    assert "server CPU cores" not in html  # unknown, so no column of dashes
    assert "No trial met the SLO." in render_tune_html(all_failed_tune())


@pytest.mark.parametrize("name", ["run", "bare", "empty-run", "tune", "empty-tune", "failed-tune"])
def test_browser_draws_page(pages, browser, name):
    index, plots = pages[name]
    assert_drawn(browser, index, plots)


def test_failures_are_counted_apart_by_kind():
    html = render_run_html(full_run())
    assert "Failures by kind" in html and '<td class="text">HTTP 500</td>' in html
    assert "successful requests/s" in html and "count successful requests only" in html
    assert "Failures by kind" not in render_run_html(bare_url_run())  # nothing failed: no table


def test_lines_that_coincide_stay_visible():
    """Two deployments at the same replica count: each line is narrower and dashed differently from the one before,
    so the one beneath shows around it."""
    replicas = run_figures(full_run())["replicas"]
    assert replicas is not None
    digits, fraud, p95 = replicas.data  # and p95 latency, on the second axis
    assert p95.yaxis == "y2" and digits.yaxis != "y2" and fraud.yaxis != "y2"
    assert digits.y[0] == fraud.y[0]
    assert digits.line.width > fraud.line.width and digits.line.dash != fraud.line.dash
    latency = run_figures(full_run())["latency"]  # percentiles coincide when a second has few answers
    assert len({(t.line.dash, t.line.width) for t in latency.data}) == len(latency.data) == 3


def test_the_modebar_covers_no_legend(pages, browser):
    """plotly shows its modebar at the plot's top right on hover: no legend may sit under it."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    try:
        page.goto(pages["run"][0].as_uri(), wait_until="load")
        for plot in RUN_PLOTS:
            figure = page.locator(f"#{plot}")
            figure.scroll_into_view_if_needed()
            figure.hover()
            modebar = page.locator(f"#{plot} .modebar")
            modebar.wait_for(state="visible")
            bar, legend = modebar.bounding_box(), page.locator(f"#{plot} .infolayer > g.legend").bounding_box()
            assert bar and legend, plot
            apart = (
                legend["x"] >= bar["x"] + bar["width"]
                or bar["x"] >= legend["x"] + legend["width"]
                or legend["y"] >= bar["y"] + bar["height"]
                or bar["y"] >= legend["y"] + legend["height"]
            )
            assert apart, (plot, bar, legend)
    finally:
        page.close()
