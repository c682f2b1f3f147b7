"""Reports of load runs and tuning sweeps: one offline HTML page each, plus the records as JSON (and trials as CSV).

Reports render records and never measure. The page embeds plotly.js once and
loads nothing over the network, so it can be mailed, archived or opened on
a machine without internet access.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import plotly.graph_objects as go
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from ._figures import run_figures, tradeoff_figure, trials_figure
from .records import ModelKnobs, RunRecord, TuneRecord

__all__ = ["render_run_html", "render_tune_html", "write_run_report", "write_tune_report"]

REPLICAS_NOTE = "Replica counts are recorded when loadtest starts the app itself."
# No "send to Chart Studio" link: the page must not point anywhere online.
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
# Non-breaking: a wrapped column head should not strand its unit.
_P50, _P95, _P99 = "p50\u00a0ms", "p95\u00a0ms", "p99\u00a0ms"
_OK_RPS = "successful requests/s"
_COUNTING = "Requests/s and latency percentiles count successful requests only; failed ones are counted apart, by kind."
_STAGES = (
    "Requests and failures: every request that ended in the stage (the last one's stragglers included), so the "
    "stages add up to the run. Requests/s and percentiles: the stage's steady state, after its first second "
    "(users starting or stopping)."
)
_RUN_PLOTS = {
    "throughput": "Throughput",
    "latency": "Latency percentiles",
    "replicas": "Running replicas and p95 latency",
    "cpu": "CPU in use",
}


@dataclass(frozen=True)
class _Table:
    columns: list[str]
    rows: list[list[str]]
    text_columns: frozenset[int] = frozenset({0})  # left-aligned; the others hold numbers


@dataclass(frozen=True)
class _Section:
    title: str
    table: _Table | None = None
    plot_id: str | None = None
    plot: Markup | None = None
    note: str | None = None
    caption: str | None = None  # a sentence under the table on how to read it
    warnings: list[str] = field(default_factory=list)


@cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        # The template is named *.html.j2, which select_autoescape's defaults would not recognise as HTML.
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def _plotlyjs() -> Markup:
    return Markup(get_plotlyjs())


def _num(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _plot(fig: go.Figure, plot_id: str) -> Markup:
    # plotly.js is in the page's head once, so every figure leaves it out.
    html = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"{plot_id}-figure", config=_PLOT_CONFIG)
    return Markup(html)


def _render(
    title: str,
    facts: list[tuple[str, str]],
    sections: list[_Section],
    summary: str = "",
    link: tuple[str, str] | None = None,  # (label, relative href)
) -> str:
    template = _environment().get_template("report.html.j2")
    return template.render(
        title=title, facts=facts, sections=sections, summary=summary, link=link, plotlyjs=_plotlyjs()
    )


def _headline(record: RunRecord) -> _Table:
    cells = {
        "requests": _num(record.requests),
        "failures": _num(record.failures),
        _OK_RPS: _num(record.rps),
        _P50: _num(record.p50_ms),
        _P95: _num(record.p95_ms),
        _P99: _num(record.p99_ms),
        "generator CPU cores": _num(record.generator_cpu_cores, 2),
    }
    # Server figures exist only when the server ran on this machine or exposed /metrics: no column of dashes otherwise.
    if record.server_cpu_cores is not None:
        cells["server CPU cores"] = _num(record.server_cpu_cores, 2)
    if record.server_memory_mb is not None:
        cells["server peak memory MB"] = _num(record.server_memory_mb, 0)
    if record.server_requests is not None:
        cells["server-counted requests"] = _num(record.server_requests)
    return _Table(list(cells), [list(cells.values())], text_columns=frozenset())


def _run_sections(record: RunRecord, prefix: str = "", heading: str = "") -> list[_Section]:
    sections = [_Section(f"{heading}Headline", table=_headline(record), caption=_COUNTING, warnings=record.warnings)]
    if record.failures_by_kind:
        rows = [[kind, _num(count)] for kind, count in record.failures_by_kind.items()]
        sections.append(_Section(f"{heading}Failures by kind", table=_Table(["kind", "count"], rows)))
    if record.errors:
        rows = [[message, _num(count)] for message, count in sorted(record.errors.items(), key=lambda e: -e[1])]
        sections.append(_Section(f"{heading}Errors", table=_Table(["message", "count"], rows)))
    if record.endpoints:
        columns = ["endpoint", "requests", "failures", _OK_RPS, _P50, _P95, _P99]
        columns += ["mean batch rows", "server requests"]
        rows = [
            [e.name, _num(e.requests), _num(e.failures), _num(e.rps), _num(e.p50_ms), _num(e.p95_ms), _num(e.p99_ms)]
            + [_num(e.mean_batch_rows), _num(e.server_requests)]
            for e in record.endpoints
        ]
        sections.append(_Section(f"{heading}Endpoints", table=_Table(columns, rows)))
    if len(record.stages) > 1:
        columns = ["users", "from s", "to s", "requests", "failures", _OK_RPS, _P50, _P95, _P99]
        rows = [
            [_num(s.users), _num(s.start_s), _num(s.end_s), _num(s.requests), _num(s.failures), _num(s.rps)]
            + [_num(s.p50_ms), _num(s.p95_ms), _num(s.p99_ms)]
            for s in record.stages
        ]
        table = _Table(columns, rows, text_columns=frozenset())
        sections.append(_Section(f"{heading}Stages", table=table, caption=_STAGES))
    for key, fig in run_figures(record).items():
        plot_id = f"{prefix}plot-{key}"
        title = f"{heading}{_RUN_PLOTS[key]}"
        if fig is None:
            sections.append(_Section(title, plot_id=plot_id, note=REPLICAS_NOTE))
        else:
            sections.append(_Section(title, plot_id=plot_id, plot=_plot(fig, plot_id)))
    return sections


def render_run_html(record: RunRecord) -> str:
    """The run's page: what was asked, the headline numbers, per-endpoint and per-stage tables, and time plots."""
    config = record.config
    facts = [
        ("target", config.url),
        ("started", config.started_at or "–"),
        ("shape", config.shape),
        ("users", f"{config.users} (spawn rate {config.spawn_rate:g}/s)"),
        ("duration", f"{config.duration_s:g} s asked, {record.duration_s:.1f} s measured"),
        ("protocol", f"{config.protocol}, {config.rows_per_request} row(s) per request"),
    ]
    if config.workers:
        facts.append(("generator workers", str(config.workers)))
    if config.endpoints:
        facts.append(("endpoint weights", ", ".join(f"{name} {weight:g}" for name, weight in config.endpoints.items())))
    return _render(f"Load test: {config.app or config.url}", facts, _run_sections(record))


def _trials_table(record: TuneRecord) -> _Table:
    rows = []
    for trial in record.trials:
        tags = [tag for tag, on in (("baseline", trial.baseline), ("best", trial.number == record.best)) if on]
        number = f"{trial.number}" + (f" ({', '.join(tags)})" if tags else "")
        rows.append(
            [
                number,
                trial.label(),
                _num(trial.best_rps),
                _num(trial.best_p95_ms),
                _num(trial.best_users),
                trial.error or "",
            ]
        )
    columns = ["trial", "settings", "best requests/s", "p95 ms at best", "users at best", "error"]
    return _Table(columns, rows, text_columns=frozenset({0, 1, 5}))


def render_tune_html(record: TuneRecord, best_run: RunRecord | None = None) -> str:
    """The sweep's page: the recommendation, every trial's throughput/latency trade-off, and the best trial's run."""
    best, baseline = record.trial(record.best), record.baseline
    facts = [
        ("latency SLO", f"p95 ≤ {record.slo_p95_ms:g} ms"),
        ("trials", f"{len(record.trials)} of at most {record.max_trials}"),
        ("best trial", f"{best.number}: {best.label()}" if best else "none met the SLO"),
        ("baseline", f"trial {baseline.number}: {baseline.label()}" if baseline else "–"),
        ("stopped because", record.stopped_because or "–"),
    ]
    summary = record.summary or ("" if best else "No trial met the SLO.")
    sections = [
        _Section(
            "Throughput against p95 latency, per trial",
            plot_id="plot-tradeoff",
            plot=_plot(tradeoff_figure(record), "plot-tradeoff"),
        ),
        _Section(
            "Best throughput within the SLO, per trial",
            plot_id="plot-trials",
            plot=_plot(trials_figure(record), "plot-trials"),
        ),
        _Section("Trials", table=_trials_table(record)),
    ]
    if best_run is not None:
        sections += _run_sections(best_run, prefix="best-", heading="Best trial's run: ")
    link = ("tuned spec", record.tuned_spec) if record.tuned_spec else None
    return _render(f"Tuning: {record.app}", facts, sections, summary=summary, link=link)


def write_run_report(record: RunRecord, directory: Path) -> Path:
    """Write `summary.json` and `index.html` into `directory`; return the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.json").write_text(record.model_dump_json(indent=2), encoding="utf-8")
    index = directory / "index.html"
    index.write_text(render_run_html(record), encoding="utf-8")
    return index


def _write_trials_csv(record: TuneRecord, path: Path) -> None:
    models = list(dict.fromkeys(name for trial in record.trials for name in trial.knobs))
    knob_names = list(ModelKnobs.model_fields)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        fixed = ["number", "baseline", "best_rps", "best_p95_ms", "best_users", "error"]
        writer.writerow(fixed + [f"{model}.{knob}" for model in models for knob in knob_names])
        for t in record.trials:
            knobs = [
                getattr(t.knobs[model], knob) if model in t.knobs else None for model in models for knob in knob_names
            ]
            row = [t.number, t.baseline, t.best_rps, t.best_p95_ms, t.best_users, t.error, *knobs]
            writer.writerow(["" if value is None else value for value in row])


def write_tune_report(record: TuneRecord, directory: Path, best_run: RunRecord | None = None) -> Path:
    """Write `index.html`, `trials.csv` and `tune.json` into `directory`; return the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tune.json").write_text(record.model_dump_json(indent=2), encoding="utf-8")
    _write_trials_csv(record, directory / "trials.csv")
    index = directory / "index.html"
    index.write_text(render_tune_html(record, best_run), encoding="utf-8")
    return index
