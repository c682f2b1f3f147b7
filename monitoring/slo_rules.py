"""The models' `slo:` sections in Prometheus: recording and burn-rate alerting rules, and compliance reports.

Each objective is a ratio of bad requests. Availability: answered 5xx or 429. Latency (`latency_ms: {p95: 100}`):
slower than the bound, `count - bucket{le=bound}` of `modelfleet_request_latency_seconds` (the ingress adds every SLO
bound to its buckets). An SLO covers a model's every version and protocol.

Alerts follow the SRE workbook's multiwindow, multi-burn-rate recipe (chapter 5, "Alerting on SLOs"). The burn rate
is the error ratio over the error budget (1 - objective): at 1x the budget lasts exactly the SLO window. Each alert
fires when a long and a short window (1/12 of it, so the alert stops soon after the burn does) both burn faster than
`budget share x SLO window / long window`: page at 2% of the budget in 1h or 5% in 6h, ticket at 10% in 3d. For a
30d window that is 14.4x, 6x and 1x; for 7d 3.36x, 1.4x and 0.233x. A pair whose threshold needs an error ratio of
100% or more (a p90 objective's budget is 10%: 14.4x of it is 144%), or whose long window exceeds the SLO window,
cannot mean anything and is left out (`slo_rule_warnings` says which).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx
import yaml
from prometheus_client.utils import floatToGoString

from .slo import SloSpec, window_seconds

__all__ = [
    "ALERT",
    "BURN_WINDOWS",
    "BurnWindow",
    "ModelReport",
    "Objective",
    "PrometheusError",
    "app_objectives",
    "burn_rate_factors",
    "dump_rules",
    "slo_report",
    "slo_rule_groups",
    "slo_rule_warnings",
]

REQUESTS = "modelfleet_requests_total"
LATENCY = "modelfleet_request_latency_seconds"
BAD_STATUS = "5..|429"
RATIO = "model:modelfleet_slo_errors:ratio_rate"  # + window: model:modelfleet_slo_errors:ratio_rate5m
OBJECTIVE = "model:modelfleet_slo_objective:ratio"
BUDGET_REMAINING = "model:modelfleet_slo_error_budget_remaining:ratio"
ALERT = "ModelfleetSLOBurnRateHigh"
RATIO_WINDOWS = ("5m", "30m", "1h", "6h", "3d")


class _Model(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def slo(self) -> SloSpec | None: ...


class _App(Protocol):
    """What the rules need of an app spec (serve_apps.spec.AppSpec, which this room does not import)."""

    @property
    def name(self) -> str: ...
    @property
    def models(self) -> Sequence[_Model]: ...


@dataclass(frozen=True)
class BurnWindow:
    """One alert condition: both windows burn faster than the rate that spends `budget_share` in `long`."""

    severity: str
    long: str
    short: str
    budget_share: float

    def factor(self, slo_window: str) -> float:
        return round(self.budget_share * window_seconds(slo_window) / window_seconds(self.long), 6)


BURN_WINDOWS = (
    BurnWindow("page", "1h", "5m", 0.02),
    BurnWindow("page", "6h", "30m", 0.05),
    BurnWindow("ticket", "3d", "6h", 0.10),
)


def burn_rate_factors(slo_window: str = "30d") -> dict[str, float]:
    """{long window: burn-rate threshold}: {'1h': 14.4, '6h': 6.0, '3d': 1.0} for a 30d SLO window."""
    return {b.long: b.factor(slo_window) for b in BURN_WINDOWS}


def _num(value: float) -> str:
    return f"{value:.12g}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Objective:
    """One objective of one model: `slo` is availability or latency_pNN; `target` the share of good requests."""

    app: str
    model: str
    slo: str
    target: float
    window: str
    bound_s: float | None = None  # latency objectives: the bound, in seconds

    @property
    def budget(self) -> float:
        return round(1 - self.target, 12)

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.app, "model": self.model, "slo": self.slo}

    def selector(self, **extra: str) -> str:
        pairs = {"app": self.app, "model": self.model, **extra}
        return "{" + ",".join(f"{k}={_quote(v)}" for k, v in pairs.items()) + "}"

    def sums(self, fn: str, window: str) -> tuple[str, str]:
        """(all requests, bad requests) over `window` as PromQL, `fn` being rate or increase."""
        if self.bound_s is None:
            total = f"sum by (app, model) ({fn}({REQUESTS}{self.selector()}[{window}]))"
            bad_status = self.selector()[:-1] + f',status=~"{BAD_STATUS}"}}'
            bad = f"sum by (app, model) ({fn}({REQUESTS}{bad_status}[{window}]))"
            return total, f"({bad}\nor\n{total} * 0)"  # 0, not nothing, before the first 5xx or 429
        total = f"sum by (app, model) ({fn}({LATENCY}_count{self.selector()}[{window}]))"
        within = f"sum by (app, model) ({fn}({LATENCY}_bucket{self.selector(le=self.le)}[{window}]))"
        return total, f"({total}\n-\n{within})"

    @property
    def le(self) -> str:
        """The bucket's `le` as prometheus_client writes it (0.1 -> "0.1", 1 -> "1.0")."""
        assert self.bound_s is not None
        return floatToGoString(self.bound_s)

    def error_ratio(self, window: str) -> str:
        total, bad = self.sums("rate", window)
        return f"{bad}\n/\n{total}"

    def describe(self) -> str:
        if self.bound_s is None:
            what = f"{_num(self.target * 100)}% of requests answered without a 5xx or 429"
        else:
            what = f"{_num(self.target * 100)}% of requests answered within {_num(self.bound_s * 1000)} ms"
        return f"{what} over {self.window} (error budget: {_num(self.budget * 100)}% of requests)"

    def burn_windows(self) -> tuple[list[BurnWindow], list[str]]:
        """The alert conditions that can fire for this objective, and why each other one is left out."""
        kept, left_out = [], []
        for b in BURN_WINDOWS:
            factor, name = b.factor(self.window), f"{self.model} {self.slo}: the {b.severity} alert over {b.long}"
            if window_seconds(b.long) > window_seconds(self.window):
                left_out.append(f"{name} is left out: it is longer than the SLO window {self.window}")
            elif factor * self.budget >= 1:
                left_out.append(
                    f"{name} is left out: burning {_num(factor)}x an error budget of {_num(self.budget * 100)}% "
                    "needs more than every request to fail"
                )
            else:
                kept.append(b)
        return kept, left_out


def app_objectives(app: _App) -> list[Objective]:
    """Every objective of every model with an `slo:` section, in the spec's order."""
    found = []
    for model in app.models:
        slo = model.slo
        if slo is None:
            continue
        if slo.availability is not None:
            target = round(slo.availability / 100, 12)
            found.append(Objective(app.name, model.name, "availability", target, slo.window))
        for quantile, (share, bound_s) in slo.latency_targets().items():
            found.append(Objective(app.name, model.name, f"latency_{quantile}", share, slo.window, bound_s))
    return found


def _alert(objective: Objective, severity: str, windows: list[BurnWindow]) -> dict[str, Any]:
    ratio = objective.selector(slo=objective.slo)
    pairs = [
        f"(\n  {RATIO}{b.long}{ratio} / {_num(objective.budget)} > {_num(b.factor(objective.window))}\n"
        f"and\n  {RATIO}{b.short}{ratio} / {_num(objective.budget)} > {_num(b.factor(objective.window))}\n)"
        for b in windows
    ]
    conditions = ", or ".join(
        f"over {b.long} and {b.short} is above {_num(b.factor(objective.window))}x "
        f"({_num(b.budget_share * 100)}% of the budget in {b.long})"
        for b in windows
    )
    verb = "Pages" if severity == "page" else "Opens a ticket"
    return {
        "alert": ALERT,
        "expr": "\nor\n".join(pairs),
        "labels": {"severity": severity, **objective.labels},
        "annotations": {
            "summary": (
                f"{objective.model} ({objective.app}) burns its {objective.slo} error budget "
                '{{ $value | printf "%.1f" }}x as fast as its SLO allows'
            ),
            "description": (
                f"SLO: {objective.describe()}. The burn rate over the long window is "
                '{{ $value | printf "%.1f" }}x (1x spends the budget in exactly '
                f"{objective.window}). {verb} when the burn rate {conditions}."
            ),
        },
    }


def slo_rule_groups(app: _App) -> dict[str, Any]:
    """A Prometheus rule file's content for the app's objectives: each objective's error ratio over the alerts'
    windows and its SLO window, its target, the budget left, and its page and ticket alerts."""
    objectives = app_objectives(app)
    rules: list[dict[str, Any]] = []
    for o in objectives:
        for window in dict.fromkeys((*RATIO_WINDOWS, o.window)):
            rules.append({"record": f"{RATIO}{window}", "expr": o.error_ratio(window), "labels": o.labels})
        rules.append({"record": OBJECTIVE, "expr": f"vector({_num(o.target)})", "labels": o.labels})
        rules.append(
            {
                "record": BUDGET_REMAINING,
                "expr": f"1 - {RATIO}{o.window}{o.selector(slo=o.slo)} / {_num(o.budget)}",
                "labels": {**o.labels, "window": o.window},
            }
        )
    for o in objectives:
        kept, _ = o.burn_windows()
        for severity in ("page", "ticket"):
            windows = [b for b in kept if b.severity == severity]
            if windows:
                rules.append(_alert(o, severity, windows))
    if not rules:
        return {"groups": []}
    return {"groups": [{"name": f"modelfleet-slo-{app.name}", "rules": rules}]}


def slo_rule_warnings(app: _App) -> list[str]:
    """Alert conditions left out of the app's rules, each with its reason."""
    return [why for o in app_objectives(app) for why in o.burn_windows()[1]]


class _RulesDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as a person would write them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_RulesDumper.add_representer(str, _represent_str)


def dump_rules(groups: dict[str, Any]) -> str:
    """A rule file's YAML, its PromQL readable."""
    return yaml.dump(groups, Dumper=_RulesDumper, sort_keys=False, width=120, allow_unicode=True)


class PrometheusError(Exception):
    """Prometheus did not answer a query: unreachable, refusing it, or not speaking its HTTP API."""


class _HttpGet(Protocol):
    def get(self, url: str, *, params: dict[str, str], timeout: float) -> httpx.Response: ...


@dataclass(frozen=True)
class ModelReport:
    """How one objective of one model did over a window. Request counts are Prometheus's `increase()` estimates
    (extrapolated to the window's edges, so not whole numbers); the ratios between them are exact."""

    app: str
    model: str
    slo: str
    window: str
    objective_percent: float
    budget_total_percent: float  # of requests: 100 - objective
    status: str  # met | breached | no data
    requests: float | None = None  # None: no requests over the window
    bad_requests: float | None = None
    achieved_percent: float | None = None
    compliant: bool | None = None
    budget_consumed_percent: float | None = None  # of the budget; above 100 when the objective is missed
    budget_remaining_percent: float | None = None  # of the budget; negative when the objective is missed
    note: str | None = None  # why there is no data, where it is not for want of requests


def _query_value(client: _HttpGet, base_url: str, promql: str, at: float) -> float | None:
    """The value at `at` (Unix time) of a query that sums to one sample; None for an empty vector or NaN."""
    url = f"{base_url.rstrip('/')}/api/v1/query"
    try:
        response = client.get(url, params={"query": promql, "time": f"{at:.3f}"}, timeout=30.0)
    except httpx.HTTPError as exc:
        raise PrometheusError(
            f"cannot reach Prometheus at {base_url}: {type(exc).__name__}: {exc}; check --prometheus and that it runs"
        ) from None
    try:
        body = response.json()
        status = body["status"]
    except (ValueError, TypeError, KeyError):
        raise PrometheusError(
            f"{base_url} answered HTTP {response.status_code} with something other than Prometheus's query API "
            f"({response.text[:80]!r}); --prometheus takes the server's base URL, e.g. http://prometheus:9090"
        ) from None
    if status != "success":
        raise PrometheusError(f"Prometheus at {base_url} refused {promql!r}: {body.get('error', status)}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") != "vector" or not isinstance(result, list):
        raise PrometheusError(f"Prometheus at {base_url} answered {promql!r} with no vector: {str(data)[:120]}")
    if not result:
        return None
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise PrometheusError(f"Prometheus at {base_url} answered {promql!r} with {str(result[0])[:120]}") from None
    return None if math.isnan(value) else value


def _report(objective: Objective, requests: float | None, bad: float | None) -> ModelReport:
    budget_percent = round(objective.budget * 100, 10)
    base = ModelReport(
        objective.app,
        objective.model,
        objective.slo,
        objective.window,
        objective_percent=round(objective.target * 100, 10),
        budget_total_percent=budget_percent,
        status="no data",
    )
    if not requests:
        return base
    if bad is None and objective.bound_s is not None:
        note = f'no le="{objective.le}" bucket in {LATENCY}: the ingress does not measure this bound'
        return replace(base, requests=round(requests, 3), note=note)
    bad = min(max(bad or 0.0, 0.0), requests)
    error_percent = bad / requests * 100
    consumed = error_percent / budget_percent * 100
    met = error_percent <= budget_percent
    return replace(
        base,
        status="met" if met else "breached",
        requests=round(requests, 3),
        bad_requests=round(bad, 3),
        achieved_percent=round(100 - error_percent, 9),
        compliant=met,
        budget_consumed_percent=round(consumed, 9),
        budget_remaining_percent=round(100 - consumed, 9),
    )


def slo_report(
    app: _App, prometheus_url: str, window: str | None = None, client: _HttpGet = httpx
) -> list[ModelReport]:
    """Each objective's compliance over its SLO window (or `window`, e.g. 7d), from Prometheus's query API.

    ValueError for a malformed `window`; PrometheusError when Prometheus cannot answer.
    """
    if window is not None:
        window_seconds(window)
    # One evaluation time for every query: increase() extrapolates to the window's end, by a factor that changes
    # with the time asked, so a ratio of two counts is exact only when both are read at the same instant.
    at = time.time()
    reports = []
    for objective in app_objectives(app):
        if window is not None:
            objective = replace(objective, window=window)
        total_q, bad_q = (f"sum({q})" for q in objective.sums("increase", objective.window))
        requests = _query_value(client, prometheus_url, total_q, at)
        bad = None
        if requests:
            bad = _query_value(client, prometheus_url, bad_q, at)  # None: the latency bound is not among the buckets
        reports.append(_report(objective, requests, bad))
    return reports
