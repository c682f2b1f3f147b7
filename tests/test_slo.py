"""SLOs in Prometheus: the generated burn-rate rules and the shipped rules under promtool (check and unit tests),
`modelfleet slo rules|report`, the report against a real Prometheus scraping a known split of good and bad requests,
the Grafana dashboard's queries, and docs/metrics.md naming every series they read. Ray-free."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from modelfleet.cli.slo import app as slo_app
from monitoring.slo_rules import (
    ALERT,
    PrometheusError,
    burn_rate_factors,
    dump_rules,
    slo_report,
    slo_rule_groups,
    slo_rule_warnings,
)
from serve_apps.spec import AppSpec
from tests.fixtures.prometheus import PROMTOOL, PrometheusServer, need_promtool
from tests.helpers import ROOT, free_port

DEPLOY = ROOT / "deploy"
SHIPPED_RULES = DEPLOY / "prometheus" / "modelfleet.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "modelfleet-app.json"
VALUE = '{{ $value | printf "%.1f" }}'


def _model(name: str, slo: dict | None = None) -> dict[str, Any]:
    model: dict[str, Any] = {
        "name": name,
        "format": "builtin",
        "module": "echo",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
    }
    return model | ({"slo": slo} if slo is not None else {})


def _spec(models: list[dict[str, Any]], name: str = "shop") -> dict[str, Any]:
    return {"name": name, "models": models}


def _write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    path = folder / "app.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    need_promtool()
    return subprocess.run([str(PROMTOOL), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_burn_rate_factors_come_from_budget_shares_and_the_window() -> None:
    assert burn_rate_factors("30d") == {"1h": 14.4, "6h": 6.0, "3d": 1.0}
    assert burn_rate_factors("7d") == {"1h": 3.36, "6h": 1.4, "3d": pytest.approx(0.2333, abs=1e-4)}
    assert burn_rate_factors("4w")["1h"] == pytest.approx(13.44)


def test_shipped_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = _promtool("check", "rules", SHIPPED_RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
    assert tests
    tested = _promtool("test", "rules", *tests)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {
        r["alert"] for g in yaml.safe_load(SHIPPED_RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    assert alerts == {
        "ModelfleetHighErrorRatio",
        "ModelfleetLatencyHigh",
        "ModelfleetReplicasMissing",
        "ModelfleetDriftDetected",
        "ModelfleetPayloadLogDropping",
    }
    tested_alerts = {
        case["alertname"]
        for path in tests
        for group in yaml.safe_load(path.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
    }
    assert tested_alerts == alerts  # each one tested (firing and silent, see the test file)


def test_generated_rules_pass_promtool_check(tmp_path: Path) -> None:
    spec = AppSpec.model_validate(
        _spec(
            [
                _model("fraud", {"availability": 99.9, "latency_ms": {"p95": 100, "p99": 1000}}),
                _model("weekly", {"availability": 99, "latency_ms": {"p90": 250}, "window": "7d"}),
                _model("plain"),
            ]
        )
    )
    groups = slo_rule_groups(spec)
    path = tmp_path / "slo.rules.yml"
    path.write_text(dump_rules(groups))
    checked = _promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = groups["groups"][0]["rules"]
    les = {m for r in rules if "record" in r for m in re.findall(r'le="([^"]+)"', r["expr"])}
    assert les == {"0.1", "1.0", "0.25"}  # as prometheus_client writes the bucket bounds
    recorded = {(r["record"], r["labels"]["model"], r["labels"]["slo"]) for r in rules if "record" in r}
    assert ("model:modelfleet_slo_errors:ratio_rate7d", "weekly", "latency_p90") in recorded
    assert ("model:modelfleet_slo_errors:ratio_rate30d", "fraud", "latency_p99") in recorded
    assert {m for _, m, _ in recorded} == {"fraud", "weekly"}
    alerts = [(r["labels"]["model"], r["labels"]["slo"], r["labels"]["severity"]) for r in rules if "alert" in r]
    assert len(alerts) == len(set(alerts)) and all(r["alert"] == ALERT for r in rules if "alert" in r)
    # 7d: a p90's 10% budget burnt 3.36x (1h) is 33.6% of requests: possible; the 6h pair at 1.4x too.
    assert ("weekly", "latency_p90", "page") in alerts
    assert slo_rule_warnings(spec) == []
    p90_30d = AppSpec.model_validate(_spec([_model("fraud", {"latency_ms": {"p90": 250}})]))
    (warning,) = slo_rule_warnings(p90_30d)
    assert "page alert over 1h is left out" in warning and "14.4x" in warning


# The generated rules under promtool: per model, (bad, total) requests each minute for 75 minutes, all with a 30d
# window and 99.9% availability (budget 0.1%) unless said otherwise.
MINUTES = 75
SCENARIO: dict[str, dict[str, Any]] = {
    "burning": {"slo": {"availability": 99.9}, "bad": lambda m: 2},  # 2%: 20x, pages
    "warm": {"slo": {"availability": 99.9}, "bad": lambda m: 0.2},  # 2x: a ticket, never a page
    "calm": {"slo": {"availability": 99.9}, "bad": lambda m: 0.05},  # 0.5x: nothing
    "spike": {"slo": {"availability": 99.9}, "bad": lambda m: 20 if 31 <= m <= 38 else 0},  # pages, then stops
    "weekly": {"slo": {"availability": 99, "window": "7d"}, "bad": lambda m: 5},  # 5x of a 7d budget: pages
    "slow": {"slo": {"availability": 99.9, "latency_ms": {"p95": 100}}, "bad": lambda m: 0, "slow": 80},
}
BURNING = {
    ("burning", "availability", "page"),
    ("burning", "availability", "ticket"),
    ("warm", "availability", "ticket"),
    ("spike", "availability", "ticket"),
    ("weekly", "availability", "page"),
    ("weekly", "availability", "ticket"),
    ("slow", "latency_p95", "page"),
    ("slow", "latency_p95", "ticket"),
}
# At 38m the spike pages; by 75m its 5m and 30m windows are clean again, so only its ticket is left.
EXPECTED = {38: BURNING | {("spike", "availability", "page")}, 75: BURNING}


def _cumulative(per_minute: list[float]) -> list[float]:
    totals, total = [0.0], 0.0
    for value in per_minute:
        total += value
        totals.append(round(total, 6))
    return totals


def _scenario_series() -> tuple[list[dict[str, str]], dict[tuple[str, str], tuple[list[float], list[float]]]]:
    """promtool input series, and per (model, slo) the cumulative (bad, total) a test can compute ratios from."""
    series, counts = [], {}
    for model, plan in SCENARIO.items():
        bad = _cumulative([plan["bad"](m) for m in range(1, MINUTES + 1)])
        total = _cumulative([100.0] * MINUTES)
        good = [round(t - b, 6) for t, b in zip(total, bad, strict=True)]
        base = f'app="shop",model="{model}",version="1",protocol="v2"'
        for status, values in (("200", good), ("500", bad)):
            series.append(
                {"series": f'modelfleet_requests_total{{{base},status="{status}"}}', "values": _values(values)}
            )
        counts[(model, "availability")] = (bad, total)
        if "slow" in plan:
            slow = _cumulative([plan["slow"]] * MINUTES)
            within = [round(t - s, 6) for t, s in zip(total, slow, strict=True)]
            latency = "modelfleet_request_latency_seconds"
            series.append({"series": f'{latency}_bucket{{{base},le="0.1"}}', "values": _values(within)})
            series.append({"series": f'{latency}_bucket{{{base},le="+Inf"}}', "values": _values(total)})
            series.append({"series": f"{latency}_count{{{base}}}", "values": _values(total)})
            counts[(model, "latency_p95")] = (slow, total)
    return series, counts


def _values(values: list[float]) -> str:
    return " ".join(f"{v:g}" if v == int(v) else repr(v) for v in values)


MINUTES_OF = {"5m": 5, "30m": 30, "1h": 60, "6h": 360, "3d": 4320}


def _burn(counts: tuple[list[float], list[float]], at: int, window: str, budget: float) -> float:
    """The burn rate Prometheus's rate() gives here: the series start at 0 at minute 0 and each window's edges fall
    on samples, so nothing is extrapolated."""
    bad, total = counts
    start = max(0, at - MINUTES_OF[window])
    return (bad[at] - bad[start]) / (total[at] - total[start]) / budget


def _expected_alert(rule: dict[str, Any], value: float) -> dict[str, Any]:
    annotations = {k: v.replace(VALUE, f"{value:.1f}") for k, v in rule["annotations"].items()}
    return {"exp_labels": rule["labels"], "exp_annotations": annotations}


def _slo_unit_test(rules_path: Path, spec: AppSpec, expected: dict[int, set[tuple[str, str, str]]]) -> dict:
    series, counts = _scenario_series()
    rules = {
        (r["labels"]["model"], r["labels"]["slo"], r["labels"]["severity"]): r
        for r in slo_rule_groups(spec)["groups"][0]["rules"]
        if "alert" in r
    }
    factors = {m.name: (burn_rate_factors(m.slo.window), m.slo) for m in spec.models if m.slo is not None}
    cases = []
    for at, firing in expected.items():
        alerts = []
        for model, slo, severity in sorted(firing):
            f, spec_slo = factors[model]
            budget = 0.05 if slo == "latency_p95" else round(1 - spec_slo.availability / 100, 12)
            burn = {w: _burn(counts[(model, slo)], at, w, budget) for w in MINUTES_OF}
            if severity == "ticket":
                value = burn["3d"]
            else:
                value = burn["1h"] if burn["1h"] > f["1h"] and burn["5m"] > f["1h"] else burn["6h"]
            alerts.append(_expected_alert(rules[(model, slo, severity)], value))
        cases.append({"eval_time": f"{at}m", "alertname": ALERT, "exp_alerts": alerts})
    name = "model:modelfleet_slo_errors:ratio_rate"
    exprs = [
        {
            "expr": f'{name}1h{{model="burning"}}',
            "eval_time": "75m",
            "exp_samples": [{"labels": f'{name}1h{{app="shop",model="burning",slo="availability"}}', "value": 0.02}],
        },
        {
            "expr": f'{name}5m{{model="slow"}}',
            "eval_time": "75m",
            "exp_samples": [
                {"labels": f'{name}5m{{app="shop",model="slow",slo="availability"}}', "value": 0},
                {"labels": f'{name}5m{{app="shop",model="slow",slo="latency_p95"}}', "value": 0.8},
            ],
        },
        {  # 0.05% of requests failed against a 0.1% budget: half of it left
            "expr": 'model:modelfleet_slo_error_budget_remaining:ratio{model="calm"}',
            "eval_time": "75m",
            "exp_samples": [
                {
                    "labels": 'model:modelfleet_slo_error_budget_remaining:ratio{app="shop",model="calm",'
                    'slo="availability",window="30d"}',
                    "value": 0.5,
                }
            ],
        },
    ]
    return {
        "rule_files": [str(rules_path)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases, "promql_expr_test": exprs}],
    }


def test_generated_slo_rules_page_and_ticket_as_the_burn_rates_say(tmp_path: Path) -> None:
    spec = AppSpec.model_validate(_spec([_model(name, plan["slo"]) for name, plan in SCENARIO.items()]))
    rules_path = tmp_path / "slo.rules.yml"
    rules_path.write_text(dump_rules(slo_rule_groups(spec)))
    test_path = tmp_path / "slo.test.yml"
    test_path.write_text(yaml.safe_dump(_slo_unit_test(rules_path, spec, EXPECTED), sort_keys=False))
    tested = _promtool("test", "rules", test_path)
    assert tested.returncode == 0, tested.stdout[-6000:] + tested.stderr
    # The same test fails where it should: a 2x burn does not page, and a spike no longer pages at 75m.
    wrong = {38: EXPECTED[38] | {("warm", "availability", "page")}, 75: EXPECTED[38]}
    test_path.write_text(yaml.safe_dump(_slo_unit_test(rules_path, spec, wrong), sort_keys=False))
    failed = _promtool("test", "rules", test_path)
    assert failed.returncode == 1
    assert f"alertname: {ALERT}, time: 38m" in failed.stderr and f"alertname: {ALERT}, time: 1h15m" in failed.stderr


def test_cli_rules_names_every_model_with_an_slo(tmp_path: Path) -> None:
    need_promtool()
    spec_path = _write_spec(
        tmp_path,
        _spec(
            [
                _model("fraud", {"availability": 99.9, "latency_ms": {"p95": 100}}),
                _model("plain"),
                _model("digits", {"latency_ms": {"p90": 50}}),
            ]
        ),
    )
    result = CliRunner().invoke(slo_app, ["rules", str(spec_path)])
    assert result.exit_code == 0, result.output
    groups = yaml.safe_load(result.stdout)
    rules = groups["groups"][0]["rules"]
    assert {r["labels"]["model"] for r in rules} == {"fraud", "digits"}
    assert {(r["labels"]["model"], r["labels"]["severity"]) for r in rules if "alert" in r} == {
        ("fraud", "page"),
        ("fraud", "ticket"),
        ("digits", "page"),  # the 6h pair only: the 1h one is left out, and said so
        ("digits", "ticket"),
    }
    assert "digits latency_p90: the page alert over 1h is left out" in _one_line(result.stderr)
    written = tmp_path / "out" / "slo.yml"
    written.parent.mkdir()
    result = CliRunner().invoke(slo_app, ["rules", str(spec_path), "-o", str(written)])
    assert result.exit_code == 0 and result.stdout == "", result.output
    assert yaml.safe_load(written.read_text()) == groups
    assert _promtool("check", "rules", written).returncode == 0


def test_cli_refuses_an_app_without_slo_and_a_bad_spec_in_one_line(tmp_path: Path) -> None:
    spec_path = _write_spec(tmp_path, _spec([_model("plain")]))
    for command in (["rules", str(spec_path)], ["report", str(spec_path), "--prometheus", "http://127.0.0.1:9"]):
        result = CliRunner().invoke(slo_app, command)
        assert result.exit_code == 2, result.output
        assert "no model has an slo: section; add one to a model" in _one_line(result.stderr)
        assert result.stdout == ""
    spec_path.write_text(yaml.safe_dump(_spec([_model("fraud", {"availability": 100.5})])))
    result = CliRunner().invoke(slo_app, ["rules", str(spec_path)])
    assert result.exit_code == 2 and "availability" in _one_line(result.stderr), result.output


def test_report_says_when_prometheus_cannot_answer(tmp_path: Path) -> None:
    spec_path = _write_spec(tmp_path, _spec([_model("fraud", {"availability": 99.9})]))
    nobody = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(slo_app, ["report", str(spec_path), "--prometheus", nobody])
    assert result.exit_code == 1, result.output
    assert f"cannot reach Prometheus at {nobody}" in _one_line(result.stderr)
    result = CliRunner().invoke(slo_app, ["report", str(spec_path), "--prometheus", nobody, "--window", "30x"])
    assert result.exit_code == 2 and "--window" in _one_line(result.stderr)

    spec = AppSpec.model_validate(_spec([_model("fraud", {"availability": 99.9})]))
    answers = {
        "grafana": httpx.Response(200, text="<html>Grafana</html>"),
        "refused": httpx.Response(
            400, json={"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'}
        ),
        "matrix": httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": []}}),
    }
    says = {
        "grafana": "with something other than Prometheus's query API",
        "refused": "refused",
        "matrix": "with no vector",
    }
    for name, answer in answers.items():
        client = httpx.Client(transport=httpx.MockTransport(lambda request, answer=answer: answer))
        with pytest.raises(PrometheusError, match=says[name]):
            slo_report(spec, "http://prometheus.test", client=client)


@pytest.fixture()
def exporter() -> Iterator[tuple[str, Any]]:
    """A tiny /metrics on a free loopback port: the ingress's request counter and latency histogram for one model,
    every series present at 0 from the first scrape (increase() measures between samples)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

    registry = CollectorRegistry()
    requests = Counter("modelfleet_requests", "", ["app", "model", "version", "protocol", "status"], registry=registry)
    latency = Histogram(
        "modelfleet_request_latency_seconds",
        "",
        ["app", "model", "version", "protocol"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    children = {
        "200": requests.labels("shop", "fraud", "1", "v2", "200"),
        "500": requests.labels("shop", "fraud", "1", "v2", "500"),
        "429": requests.labels("shop", "fraud", "1", "v1", "429"),
        "latency": latency.labels("shop", "fraud", "1", "v2"),
    }
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}", children
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_report_against_a_real_prometheus(tmp_path: Path, exporter: tuple[str, Any]) -> None:
    target, children = exporter
    spec_path = _write_spec(
        tmp_path,
        _spec(
            [
                _model("fraud", {"availability": 99.9, "latency_ms": {"p95": 100}}),
                _model("idle", {"availability": 99}),
                _model("plain"),
            ]
        ),
    )
    with PrometheusServer([target], interval_s=1) as prometheus:
        fraud = 'app="shop",model="fraud"'
        prometheus.wait_for(f"modelfleet_requests_total{{{fraud}}}", lambda r: len(r) == 3, timeout=30)
        children["200"].inc(990)  # 990 good, 6 + 4 bad: 99.0% against 99.9%
        children["500"].inc(6)
        children["429"].inc(4)
        for _ in range(970):  # 970 of 1000 within 100 ms: 97% against 95%
            children["latency"].observe(0.05)
        for _ in range(30):
            children["latency"].observe(0.3)
        prometheus.wait_for(
            f"sum(modelfleet_requests_total{{{fraud}}}) + sum(modelfleet_request_latency_seconds_count{{{fraud}}})",
            lambda r: bool(r) and float(r[0]["value"][1]) == 2000,
            timeout=30,
        )
        result = CliRunner().invoke(slo_app, ["report", str(spec_path), "--prometheus", prometheus.url, "--json"])
        assert result.exit_code == 0, result.output
        reports = {(r["model"], r["slo"]): r for r in json.loads(result.stdout)}
        table = CliRunner().invoke(
            slo_app, ["report", str(spec_path), "--prometheus", prometheus.url, "--window", "1h"]
        )
    assert set(reports) == {("fraud", "availability"), ("fraud", "latency_p95"), ("idle", "availability")}
    # increase() extrapolates each count to the window's end by the same factor, so counts grow but ratios hold.
    availability = reports[("fraud", "availability")]
    assert availability["achieved_percent"] == pytest.approx(99.0, abs=1e-6)
    assert availability["compliant"] is False and availability["status"] == "breached"
    assert availability["objective_percent"] == 99.9 and availability["budget_total_percent"] == pytest.approx(0.1)
    assert availability["budget_consumed_percent"] == pytest.approx(1000, abs=1e-3)
    assert availability["budget_remaining_percent"] == pytest.approx(-900, abs=1e-3)
    assert 1000 <= availability["requests"] < 2000
    assert availability["bad_requests"] / availability["requests"] == pytest.approx(0.01, rel=1e-3)  # rounded counts
    latency = reports[("fraud", "latency_p95")]
    assert latency["achieved_percent"] == pytest.approx(97.0, abs=1e-6) and latency["compliant"] is True
    assert latency["budget_remaining_percent"] == pytest.approx(40, abs=1e-3) and latency["status"] == "met"
    idle = reports[("idle", "availability")]
    assert idle["status"] == "no data" and idle["requests"] is None and idle["compliant"] is None
    assert table.exit_code == 0, table.output
    lines = {line.split()[0] + " " + line.split()[1]: line for line in table.stdout.splitlines()}
    assert "MODEL SLO" in lines and "1h" in lines["fraud availability"]
    assert "99.00%" in lines["fraud availability"] and "breached" in lines["fraud availability"]
    assert "-900.0%" in lines["fraud availability"] and "no data" in lines["idle availability"]


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_is_one_per_app_and_its_queries_parse(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "modelfleet-app" and dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "app", "model", "version"]
    assert variables["datasource"]["query"] == "prometheus"
    assert all(variables[v]["definition"].startswith("label_values(") for v in ("app", "model", "version"))
    titles = " / ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("request rate", "error ratio", "p95", "replicas", "batch", "in flight", "drift", "error budget"):
        assert wanted in titles
    exprs = _dashboard_exprs(dashboard)
    assert all('app="$app"' in e for e in exprs)  # every panel is about the chosen app
    # promtool parses PromQL: each query, its variables filled in, as a recording rule.
    filled = [
        e.replace("$__rate_interval", "1m").replace("$app", "shop").replace("$model", ".*").replace("$version", ".*")
        for e in exprs
    ]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"q{i}", "expr": e} for i, e in enumerate(filled)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = _promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_docs_metrics_lists_every_series_the_rules_and_dashboard_read() -> None:
    documented = set(re.findall(r"^\| `(modelfleet_[a-z_]+)`", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    sources = SHIPPED_RULES.read_text() + DASHBOARD.read_text()
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"(?<![:\w])(modelfleet_[a-z_]+)", sources)}
    assert used <= documented, used - documented
    generated = dump_rules(
        slo_rule_groups(AppSpec.model_validate(_spec([_model("m", {"availability": 99, "latency_ms": {"p99": 5}})])))
    )
    assert {"modelfleet_requests_total", "modelfleet_request_latency_seconds"} <= documented
    assert "modelfleet_request_latency_seconds_bucket" in generated
