"""The app's status page (`GET /status`): one self-contained HTML page (no script, no CDN, inline style) that
refreshes itself, with per model its versions and traffic split, replicas, the last minute's traffic, latency and
errors, its SLO compliance, its drift, and the app's last deploys.

Built from what the ingress knows (the spec, the traffic split it routes by) and what the app's monitor keeps
(monitor.AppMonitor.status); every value is escaped (jinja2's autoescape): model names and features are the
operator's, request paths in the audit log are callers'.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2

from monitoring.status_stats import Totals, slo_compliance

from .spec import AppSpec
from .traffic import ModelTraffic

__all__ = ["REFRESH_S", "render_status"]

REFRESH_S = 5

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{{ refresh_s }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{ app }} · modelfleet status</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem; color: #1d2330; background: #fafbfc; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .4rem; }
.sub { color: #5b6475; margin-bottom: 1rem; }
table { border-collapse: collapse; background: #fff; min-width: 60%; }
th, td { border: 1px solid #dde1e8; padding: .3rem .6rem; text-align: right; }
th { background: #eef1f5; font-weight: 600; } td:first-child, th:first-child { text-align: left; }
.ok { color: #17733a; } .bad { color: #b42318; font-weight: 600; } .muted { color: #8a93a3; }
.model { margin-bottom: 1.2rem; } ul { margin: .3rem 0; padding-left: 1.2rem; }
</style>
</head>
<body>
<h1>{{ app }}</h1>
<div class="sub">modelfleet status · {{ at }} · traffic over the last {{ window_s }} s · refreshes every
{{ refresh_s }} s</div>
{% for model in models %}
<section class="model" id="model-{{ model.name }}">
<h2>{{ model.name }} <span class="muted">({{ model.format }}{% if model.embedded %}, embedded{% endif %})</span></h2>
<table>
<tr><th>version</th><th>traffic</th><th>replicas running / desired</th><th>req/s</th><th>p50 ms</th>
<th>p95 ms</th><th>errors</th><th>requests</th><th>drift</th></tr>
{% for v in model.versions %}
<tr>
<td>{{ v.version }}</td><td>{{ v.traffic }}</td>
<td>{% if v.replicas %}{{ v.replicas }}{% else %}<span class="muted">in the ingress</span>{% endif %}</td>
<td>{{ v.rps }}</td><td>{{ v.p50 }}</td><td>{{ v.p95 }}</td>
<td class="{{ v.error_class }}">{{ v.errors }}</td><td>{{ v.requests }}</td>
<td class="{{ v.drift_class }}">{{ v.drift }}</td>
</tr>
{% endfor %}
</table>
{% if model.slo %}
<table class="slo">
<tr><th>SLO (since the replicas started)</th><th>objective</th><th>achieved</th><th>error budget left</th></tr>
{% for row in model.slo %}
<tr><td>{{ row.name }}</td><td>{{ row.objective }}</td><td>{{ row.achieved }}</td>
<td class="{{ row.budget_class }}">{{ row.budget }}</td></tr>
{% endfor %}
</table>
{% endif %}
</section>
{% endfor %}
<h2>Last deploys</h2>
{% if deploys %}
<ul>{% for d in deploys %}<li>{{ d.time }} · {{ d.action }} · {{ d.target }} · {{ d.outcome }} · {{ d.actor }}</li>
{% endfor %}</ul>
{% else %}<p class="muted">none in this node's audit log</p>{% endif %}
</body>
</html>
"""

_environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_page = _environment.from_string(_TEMPLATE)


def _number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _percent(share: float | None, digits: int = 2) -> str:
    return "–" if share is None else f"{share * 100:.{digits}f}%"


def _traffic(version: str, primary: str, traffic: ModelTraffic | None) -> str:
    if traffic is None:
        return "100%" if version == primary else "–"
    if version == primary:
        return f"{100 - sum(c.weight for c in traffic.candidates):g}%"
    for route in traffic.candidates:
        if route.version == version:
            parts = [f"{route.weight:g}%"] if route.weight or not route.shadow else []
            if route.shadow:
                parts.append(f"shadow {route.shadow:g}%")
            return ", ".join(parts)
    return "–"


def render_status(
    spec: AppSpec, traffic: dict[str, ModelTraffic], state: dict[str, Any], deploys: list[dict[str, Any]]
) -> str:
    """The page, from the app's spec, its traffic split, the monitor's state and the newest deploy records."""
    seen = state.get("versions", {})
    window = max((v["window_s"] for v in seen.values()), default=0.0)
    models = []
    for model in spec.models:
        split = traffic.get(model.name)
        versions = [model.version, *(split.versions()[1:] if split is not None else ())]
        rows, totals = [], Totals()
        for version in dict.fromkeys(versions):
            found = seen.get(f"{model.name}@{version}")
            if found is not None:
                done = found["totals"]
                totals.requests += done["requests"]
                totals.bad += done["bad"]
                for le, n in done["buckets"].items():
                    totals.buckets[float(le)] = totals.buckets.get(float(le), 0.0) + n
            drift = (found or {}).get("drift")
            replicas = (found or {}).get("replicas") or {}
            rows.append(
                {
                    "version": version,
                    "traffic": _traffic(version, model.version, split),
                    "replicas": ""
                    if model.embedded
                    else f"{replicas.get('running', 0):g} / {replicas.get('desired', 0):g}",
                    "rps": _number(found and found["rps"]),
                    "p50": _number(found and found["p50_ms"]),
                    "p95": _number(found and found["p95_ms"]),
                    "errors": _percent(found and found["error_rate"]),
                    "error_class": "bad" if found and (found["error_rate"] or 0) > 0.01 else "",
                    "requests": _number(found and found["totals"]["requests"], 0),
                    "drift": _drift_text(drift),
                    "drift_class": "bad" if drift and drift["drifted"] else ("ok" if drift else "muted"),
                }
            )
        slo_rows = []
        if model.slo is not None:
            compliance = slo_compliance(totals, model.slo.availability, model.slo.latency_targets())
            for name, row in compliance.items():
                budget = row["budget_left"]
                slo_rows.append(
                    {
                        "name": name,
                        "objective": _percent(row["objective"], 3),
                        "achieved": _percent(row["achieved"], 3),
                        "budget": _percent(budget, 1),
                        "budget_class": "bad" if budget is not None and budget < 0 else "ok",
                    }
                )
            if not compliance:
                slo_rows.append(
                    {"name": "no requests yet", "objective": "", "achieved": "", "budget": "", "budget_class": ""}
                )
        models.append(
            {
                "name": model.name,
                "format": model.format.value,
                "embedded": model.embedded,
                "versions": rows,
                "slo": slo_rows,
            }
        )
    return _page.render(
        app=spec.name,
        at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        window_s=f"{window:g}",
        refresh_s=REFRESH_S,
        models=models,
        deploys=deploys,
    )


def _drift_text(drift: dict[str, Any] | None) -> str:
    if drift is None:
        return "not watched"
    if not drift["reference_loaded"]:
        return "reference did not load"
    if drift["drifted"]:
        return "drifting: " + ", ".join(drift["features"])
    if not drift["windows"]:
        return f"no window yet ({drift['pending_rows']} rows)"
    return f"in distribution ({drift['windows']} windows)"
