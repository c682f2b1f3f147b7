"""Plotly figures for the load-test reports: records in, figures out (no HTML, no I/O)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .records import RunRecord, Trial, TuneRecord

__all__ = ["run_figures", "tradeoff_figure", "trials_figure"]

BLUE, RED, GREEN, GREY, ORANGE, PURPLE = "#0969da", "#cf222e", "#1a7f37", "#8c959f", "#bc4c00", "#8250df"
HEIGHT_PX = 340
# Lines that coincide (two deployments at the same replica count) stay visible: each line of a plot is drawn
# narrower and in another dash than the one before, so the one beneath shows around it.
_LINE_STYLES = [("solid", 4.0), ("dash", 2.5), ("dot", 2.0), ("dashdot", 1.5), ("longdash", 1.2)]


def _style(fig: go.Figure, x_title: str, y_title: str) -> go.Figure:
    # No figure title: the page's heading above each plot names it.
    fig.update_layout(
        template="plotly_white",
        height=HEIGHT_PX,
        margin=dict(l=60, r=60, t=30, b=40),
        # Below the plot: plotly's modebar sits at the top right and would cover a legend there.
        legend=dict(orientation="h", yref="container", y=0.0, yanchor="bottom", xanchor="left", x=0.0),
        hoverlabel=dict(namelength=-1),  # whole trace names in the hover box
        xaxis=dict(title_text=x_title),
        # layout.yaxis is the primary axis, with or without a secondary one.
        yaxis=dict(title_text=y_title, rangemode="tozero"),
    )
    return fig


def _throughput(record: RunRecord) -> go.Figure:
    t = [p.t_s for p in record.timeline]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(x=t, y=[p.rps for p in record.timeline], name="successful requests/s", line_color=BLUE),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(x=t, y=[p.failures_per_s for p in record.timeline], name="failures/s", line_color=RED),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=t, y=[p.users for p in record.timeline], name="users", line=dict(color=GREY, dash="dot", shape="hv")
        ),
        secondary_y=True,
    )
    # Own ticks, not the left axis's grid: user counts are whole numbers.
    fig.update_yaxes(
        title_text="users", rangemode="tozero", showgrid=False, tickmode="auto", tickformat="d", secondary_y=True
    )
    fig.update_layout(hovermode="x unified")
    return _style(fig, "seconds since start", "per second")


def _latency(record: RunRecord) -> go.Figure:
    t = [p.t_s for p in record.timeline]
    fig = go.Figure()
    for (name, color), (dash, width) in zip(
        (("p50_ms", GREEN), ("p95_ms", ORANGE), ("p99_ms", RED)), _LINE_STYLES, strict=False
    ):
        fig.add_trace(
            go.Scatter(
                x=t,
                y=[getattr(p, name) for p in record.timeline],
                name=name.removesuffix("_ms"),
                line=dict(color=color, dash=dash, width=width),
            )
        )
    fig.update_layout(hovermode="x unified")
    return _style(fig, "seconds since start", "ms")


def _replicas(record: RunRecord) -> go.Figure | None:
    """Running replicas per deployment, and p95 latency on a second axis: how scaling follows the load."""
    if not record.replicas:
        return None
    deployments = list(dict.fromkeys(name for point in record.replicas for name in point.replicas))
    t = [p.t_s for p in record.replicas]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for i, name in enumerate(deployments):
        dash, width = _LINE_STYLES[i % len(_LINE_STYLES)]
        fig.add_trace(
            go.Scatter(
                x=t,
                y=[p.replicas.get(name) for p in record.replicas],
                name=name,
                mode="lines",
                line=dict(shape="hv", dash=dash, width=width),
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[p.t_s for p in record.timeline],
            y=[p.p95_ms for p in record.timeline],
            name="p95 latency",
            line=dict(color=ORANGE, dash="dot", width=1.5),
        ),
        secondary_y=True,
    )
    fig.update_yaxes(dtick=1, secondary_y=False)
    fig.update_yaxes(title_text="p95 ms", rangemode="tozero", showgrid=False, secondary_y=True)
    fig.update_layout(hovermode="x unified")
    return _style(fig, "seconds since start", "replicas")


def _cpu(record: RunRecord) -> go.Figure:
    t = [p.t_s for p in record.resources]
    fig = go.Figure()
    if any(p.server_cpu_cores is not None for p in record.resources):
        fig.add_trace(
            go.Scatter(x=t, y=[p.server_cpu_cores for p in record.resources], name="server", line_color=PURPLE)
        )
    fig.add_trace(
        go.Scatter(x=t, y=[p.generator_cpu_cores for p in record.resources], name="load generator", line_color=GREY)
    )
    fig.update_layout(hovermode="x unified")
    return _style(fig, "seconds since start", "cores")


def run_figures(record: RunRecord) -> dict[str, go.Figure | None]:
    """Plot name -> figure; None where the run recorded nothing to draw (replicas of a bare URL)."""
    return {
        "throughput": _throughput(record),
        "latency": _latency(record),
        "replicas": _replicas(record),
        "cpu": _cpu(record),
    }


def _trial_name(trial: Trial, best: int | None) -> str:
    tags = [tag for tag, on in (("baseline", trial.baseline), ("best", trial.number == best)) if on]
    return f"trial {trial.number}" + (f" ({', '.join(tags)})" if tags else "")


def tradeoff_figure(record: TuneRecord) -> go.Figure:
    """Each trial's concurrency sweep as throughput against p95: up and to the left of the SLO line is better."""
    fig = go.Figure()
    for trial in record.trials:
        if not trial.stages:
            continue
        stages = sorted(trial.stages, key=lambda s: s.users)
        if trial.number == record.best:
            line, marker = dict(color=GREEN, width=4), dict(symbol="star", size=14)
        elif trial.baseline:
            line, marker = dict(color=GREY, width=3, dash="dash"), dict(symbol="diamond", size=10)
        else:
            line, marker = dict(width=1.5), dict(size=7)
        fig.add_trace(
            go.Scatter(
                x=[s.p95_ms for s in stages],
                y=[s.rps for s in stages],
                mode="markers+lines",
                name=_trial_name(trial, record.best),
                line=line,
                marker=marker,
                opacity=1.0 if trial.baseline or trial.number == record.best else 0.75,
                hovertext=[f"{s.users} users, {s.failures} failures" for s in stages],
                hovertemplate="%{hovertext}<br>p95 %{x:.1f} ms<br>%{y:.1f} requests/s",
            )
        )
    fig.add_vline(
        x=record.slo_p95_ms, line_dash="dash", line_color=RED, annotation_text=f"SLO p95 {record.slo_p95_ms:g} ms"
    )
    fig = _style(fig, "p95 latency (ms)", "requests/s")
    fig.update_xaxes(rangemode="tozero")
    return fig


def trials_figure(record: TuneRecord) -> go.Figure:
    """Best throughput within the SLO per trial; failed trials are an x at zero whose hover says why."""
    fig = go.Figure()
    groups = (
        ("baseline", GREY, lambda t: t.baseline and t.error is None),
        ("best", GREEN, lambda t: t.number == record.best and not t.baseline and t.error is None),
        ("other", BLUE, lambda t: not t.baseline and t.number != record.best and t.error is None),
    )
    for name, color, member in groups:
        trials = [t for t in record.trials if member(t)]
        if trials:
            fig.add_trace(
                go.Bar(
                    x=[str(t.number) for t in trials],
                    y=[t.best_rps for t in trials],
                    name=name,
                    marker_color=color,
                    hovertext=[t.label() + ("" if t.best_rps else "<br>no stage within the SLO") for t in trials],
                    hovertemplate="trial %{x}: %{y:.1f} requests/s<br>%{hovertext}<extra></extra>",
                )
            )
    failed = [t for t in record.trials if t.error is not None]
    if failed:
        fig.add_trace(
            go.Scatter(
                x=[str(t.number) for t in failed],
                y=[0.0] * len(failed),
                mode="markers",
                name="failed",
                marker=dict(symbol="x", size=12, color=RED),
                hovertext=[t.error for t in failed],
                hovertemplate="trial %{x} failed: %{hovertext}<extra></extra>",
            )
        )
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=[str(t.number) for t in record.trials])
    fig.update_layout(barmode="overlay")
    return _style(fig, "trial", "requests/s")
