"""Load tests, the tuner and their reports (issue 6).

The pure parts (scenarios, shapes, the search, tuned specs) are checked
directly; the commands run as users run them: against the session's fleet,
and, for the acceptance commands, on an embedded Ray of their own.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtests.chaos import LOADTEST_REQUESTS_FAILED
from loadtests.measure import LiveTally, Measurements, summarize
from loadtests.records import ModelKnobs, RunConfig, StageResult, Trial
from loadtests.scenario import ZIPF_EXPONENT, ScenarioError, from_app, from_bodies, from_url
from loadtests.search import (
    Space,
    apply_knobs,
    baseline_knobs,
    best_point,
    default_space,
    search,
    tuned_spec_yaml,
    verdict,
)
from loadtests.shapes import Shape, Stage, stages
from modelfleet.cli.load import REQUESTS_FAILED, progress_line
from serve_apps.spec import load_app_spec
from serve_apps.tensors import decode_v1, decode_v2
from tests.fixtures.browser import assert_drawn
from tests.helpers import ADMIN_KEY, ROOT, free_port, run_cli

FRAUD = ROOT / "examples" / "fraud" / "app.yaml"


# --- scenarios and shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("spec_path", [ROOT / "examples" / "fleet.yaml", FRAUD])
@pytest.mark.parametrize("protocol", ["v2", "v1"])
def test_generated_bodies_pass_the_ingress_checks(spec_path: Path, protocol: str) -> None:
    """Every generated body decodes under the model's declared inputs, as the ingress would decode it."""
    spec = load_app_spec(spec_path)
    scenario = from_app(spec, "http://127.0.0.1:1", protocol=protocol, rows=3)
    assert [e.model for e in scenario.endpoints] == [m.name for m in spec.models]
    for endpoint in scenario.endpoints:
        model = spec.model(endpoint.model)
        assert len(set(endpoint.bodies)) > 1, "bodies vary"
        for body in endpoint.bodies[:8]:
            inputs = decode_v2(json.loads(body), model)[0] if protocol == "v2" else decode_v1(json.loads(body), model)
            assert all(len(array) == 3 for array in inputs.values())


def test_a_multiplexed_family_draws_its_ids_zipf_weighted() -> None:
    spec = load_app_spec(FRAUD)
    merchant = next(e for e in from_app(spec, "http://127.0.0.1:1", models=["merchant"]).endpoints)
    ids = [path.split(":")[1].split("/")[0] for path in merchant.paths]
    on_disk = sorted(p.name for p in (FRAUD.parent / "artifacts" / "merchants").iterdir())
    assert ids == on_disk and len(ids) == 50
    weights = merchant.path_weights
    assert weights[0] / weights[1] == pytest.approx(2**ZIPF_EXPONENT)
    assert all(a > b for a, b in zip(weights, weights[1:], strict=False))


def test_a_url_with_bodies_is_one_endpoint_sending_them_in_turn(tmp_path: Path) -> None:
    """What bench/ measures its targets with; `loadtest URL --payload FILE` is the same with one body."""
    url = "http://127.0.0.1:8000/v2/models/echo/infer?trace=1"
    bodies = ['{"inputs": [1]}', '{"inputs": [2]}']
    scenario = from_bodies(url, bodies, expect='"outputs"')
    assert (scenario.base_url, scenario.protocol) == ("http://127.0.0.1:8000", "v2")
    assert scenario.headers["Content-Type"] == "application/json"
    [endpoint] = scenario.endpoints
    assert endpoint.paths == ["/v2/models/echo/infer?trace=1"] and endpoint.model == "echo"
    assert endpoint.bodies == bodies and endpoint.expect == '"outputs"'
    payload = tmp_path / "body.json"
    payload.write_text(bodies[0])
    assert from_url(url, payload) == from_bodies(url, bodies[:1])
    with pytest.raises(ScenarioError, match="body 1 is not JSON"):
        from_bodies(url, [bodies[0], "{"])
    with pytest.raises(ScenarioError, match="no request body"):
        from_bodies(url, [])
    with pytest.raises(ScenarioError, match="not an http"):
        from_bodies("127.0.0.1:8000/v2/models/echo/infer", bodies)


@pytest.mark.parametrize("shape", list(Shape))
def test_shapes_are_bounded_and_reach_the_users(shape: Shape) -> None:
    plan = stages(shape, users=20, duration_s=30)
    assert plan[-1].until_s == pytest.approx(30)
    assert max(s.users for s in plan) == 20
    assert all(a.until_s < b.until_s for a, b in zip(plan, plan[1:], strict=False))
    if shape in (Shape.ramp, Shape.step):
        assert [s.users for s in plan] == sorted(s.users for s in plan) and plan[0].users < 20
    if shape is Shape.spike:
        assert [s.users for s in plan] == [5, 20, 5]


# --- measurement: successful requests only, failures apart, stages that add up ------------------------


STARTED = 1_000_000.0  # the run's wall-clock start in the synthetic samples below
REFUSED = "connection refused"


def _answers(from_s: float, until_s: float, every_s: float, ms: float, failure: str | None = None) -> list[tuple]:
    """Samples as the generator keeps them: (end time, ms, endpoint index, failure kind or None, path index), evenly
    spread."""
    count = round((until_s - from_s) / every_s)
    return [(STARTED + from_s + every_s * (i + 0.5), ms, 0, failure, 0) for i in range(count)]


def _config(plan: list[Stage]) -> RunConfig:
    users = max(s.users for s in plan)
    return RunConfig(
        url="http://127.0.0.1:1",
        shape="step",
        users=users,
        spawn_rate=users,
        duration_s=plan[-1].until_s,
        protocol="v2",
        rows_per_request=1,
    )


def test_a_stage_of_fast_failures_is_no_throughput_for_the_tuner() -> None:
    """Refused connections fail in microseconds: counted in, they would make a failing stage the fastest and best."""
    plan = [Stage(2.0, 2, 2.0), Stage(4.0, 4, 4.0)]
    samples = _answers(0, 4, 0.01, 20.0) + _answers(2, 4, 0.0002, 0.05, REFUSED)  # 100 ok/s; 5,000 refused/s later
    record = summarize(Measurements(STARTED, ["echo"], samples), plan, _config(plan))
    first, second = record.stages
    assert second.failures == 10_000 and second.failures_by_kind == {REFUSED: 10_000}
    assert second.rps == first.rps == pytest.approx(100.0)  # successful requests per second of the steady window
    assert second.p50_ms == second.p99_ms == 20.0  # latencies of the answers, not of the refusals
    assert best_point(record.stages, slo_p95_ms=50.0) == first
    assert record.rps == pytest.approx(record.successes / record.duration_s, rel=0.01)
    assert record.successes == 400 and record.p50_ms == 20.0


def test_stages_add_up_to_the_run_and_the_timeline_ends_with_the_load() -> None:
    """The settle second at each stage's start and the answers in flight when the load stopped are counted in a
    stage; the last, partial second is no point of the timeline (it would plot a drop that never was)."""
    plan = stages(Shape.step, users=4, duration_s=3)  # four stages of 0.75 s: a quarter of each is its settle time
    stragglers = [(STARTED + 3.02, 20.0, 0, None, 0), (STARTED + 3.04, 20.0, 0, "HTTP 503", 0)]
    samples = _answers(0, 3, 0.005, 20.0) + stragglers
    record = summarize(Measurements(STARTED, ["echo"], samples), plan, _config(plan))
    assert record.requests == len(samples)
    assert sum(s.requests for s in record.stages) == record.requests
    assert sum(s.failures for s in record.stages) == record.failures == 1
    assert [s.settled_s for s in record.stages] == [0.188, 0.938, 1.688, 2.438]
    assert [p.t_s for p in record.timeline] == [1, 2, 3]
    assert [p.rps for p in record.timeline] == [200, 200, 200]  # no drop at the end


def test_the_live_line_counts_successes_and_names_the_failures() -> None:
    """Once a second: how far the run is, the last seconds' successful req/s and percentiles, failures by kind."""
    samples = _answers(0, 2, 0.02, 30.0) + _answers(1, 2, 0.0005, 0.05, REFUSED)  # 50 ok/s, then 2,000 refused/s
    tally = LiveTally(samples, total_s=3.0)
    progress = tally.progress(STARTED + 2.0, elapsed_s=2.0, users=4)
    assert progress.rps == pytest.approx(50.0) and progress.p50_ms == 30.0
    assert (progress.successes, progress.failures) == (100, {REFUSED: 2000})
    line = progress_line(progress)
    assert line.startswith("2s/3s  4 users  50.0 req/s ok  p50 30 p95 30 p99 30 ms"), line
    assert line.endswith("100 ok, 2000 failed (connection refused: 2000)"), line
    samples += _answers(2, 3, 0.001, 0.05, "timeout")  # the server stops answering
    later = tally.progress(STARTED + 3.0, elapsed_s=3.0, users=4)
    assert later.rps == pytest.approx(25.0)  # the last two seconds: 50 answers
    assert later.failures == {"timeout": 1000, REFUSED: 2000} and later.successes == 100


# --- the search and tuned specs --------------------------------------------------------------------


def _measured(knobs: dict[str, ModelKnobs], number: int, score) -> Trial:
    return Trial(number=number, knobs=knobs, best_rps=score(knobs))


def _drive(space: Space, baseline, max_trials: int, score) -> tuple[list[Trial], str]:
    proposals, trials = search(space, baseline, max_trials, seed=1), []
    knobs = next(proposals)
    while True:
        trials.append(_measured(knobs, len(trials), score))
        try:
            knobs = proposals.send(trials[-1])
        except StopIteration as stop:
            return trials, stop.value


def test_search_starts_from_the_spec_and_never_measures_a_configuration_twice() -> None:
    spec = load_app_spec(ROOT / "examples" / "digits" / "app.yaml")
    space, baseline = default_space(spec, ["digits"], total_cpus=4), baseline_knobs(spec, ["digits"])

    def score(knobs):  # a landscape with one best corner: batching and more replicas pay
        k = knobs["digits"]
        return (
            100.0 * k.replicas
            + (200.0 if k.max_batch_size and k.max_batch_size >= 32 else 0.0)
            + k.max_ongoing_requests
        )

    trials, why = _drive(space, baseline, 12, score)
    assert trials[0].knobs == baseline
    keys = [repr(sorted(Space.params(t.knobs).items())) for t in trials]
    assert len(keys) == len(set(keys)) and len(trials) <= 12
    assert all(space.fits(t.knobs) for t in trials[1:]) or why
    assert max(t.best_rps for t in trials) > trials[0].best_rps  # it found better than the spec on this landscape


def test_search_stops_when_gains_flatten() -> None:
    spec = load_app_spec(ROOT / "examples" / "echo" / "app.yaml")
    trials, why = _drive(default_space(spec, ["echo"]), baseline_knobs(spec, ["echo"]), 30, lambda knobs: 100.0)
    assert len(trials) < 30 and "flattened" in why


def test_the_tuned_spec_loads_with_the_chosen_knobs(tmp_path: Path) -> None:
    spec = load_app_spec(ROOT / "examples" / "digits" / "app.yaml")
    knobs = {"digits": ModelKnobs(max_ongoing_requests=8, max_batch_size=64, batch_wait_timeout_s=0.002, replicas=2)}
    trial_spec = apply_knobs(spec, knobs)
    assert (
        trial_spec.model("digits").autoscaling.max_replicas == 2
        and trial_spec.model("digits").max_ongoing_requests == 128
    )
    path = tmp_path / "digits.tuned.yaml"
    path.write_text(tuned_spec_yaml(spec, knobs, {"digits": 6.0}, "a header\nof two lines"))
    tuned = load_app_spec(path).model("digits")
    assert (tuned.batching.max_batch_size, tuned.batching.batch_wait_timeout_s) == (64, 0.002)
    assert tuned.max_ongoing_requests == 128  # room for a full batch running and a full one waiting
    assert (tuned.autoscaling.min_replicas, tuned.autoscaling.initial_replicas, tuned.autoscaling.max_replicas) == (
        1,
        2,
        2,
    )
    assert tuned.autoscaling.target_ongoing_requests == 6.0
    assert run_cli("validate", str(path)).returncode == 0


def test_embedding_a_model_in_the_ingress_is_a_knob(tmp_path: Path) -> None:
    echo = load_app_spec(ROOT / "examples" / "echo" / "app.yaml")
    space = default_space(echo, ["echo"])
    assert space.models["echo"].embeddable
    assert any(k["echo"].embedded for k in space.grid()) and any(not k["echo"].embedded for k in space.grid())
    knobs = {"echo": ModelKnobs(max_ongoing_requests=64, replicas=1, embedded=True)}
    assert apply_knobs(echo, knobs).model("echo").embedded
    path = tmp_path / "echo.tuned.yaml"
    path.write_text(tuned_spec_yaml(echo, knobs, {"echo": 4.0}, "header"))
    tuned = load_app_spec(path).model("echo")
    assert tuned.embedded and tuned.autoscaling.max_replicas == 1  # it scales with the ingress now
    fraud = load_app_spec(FRAUD)
    fraud_space = default_space(fraud, ["featurizer", "scorer_mlp", "ensemble", "merchant"], total_cpus=8)
    assert not any(m.embeddable for m in fraud_space.models.values()), (
        "pipeline steps, pools and families stay deployments"
    )


def test_best_point_and_verdict() -> None:
    def stage(users, rps, p95, failures=0):
        return StageResult(users=users, start_s=0, end_s=1, requests=100, failures=failures, rps=rps, p95_ms=p95)

    assert (
        best_point([stage(1, 50, 5), stage(4, 180, 40), stage(8, 200, 120), stage(16, 300, 20, failures=1)], 100).users
        == 4
    )
    knobs = {"m": ModelKnobs(max_ongoing_requests=8, replicas=1)}
    base, best = Trial(number=0, knobs=knobs, baseline=True, best_rps=100), Trial(number=3, knobs=knobs, best_rps=230)
    assert "2.3x the requests/s of the current config" in verdict(best, base, 100, 5)
    assert "p95 ≤ 100 ms" in verdict(best, base, 100, 5)
    assert verdict(None, base, 100, 5).startswith("No configuration met")


# --- the commands -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["loadtest", "examples/echo/app.yaml", "--duration", "soon"], "--duration 'soon'"),
        (["loadtest", "examples/echo/app.yaml", "--duration", "30h"], "pick between 1s and 6h"),
        # every duration option takes the same style (and `--timeout-s`, its old name, plain seconds)
        (["deploy", "examples/echo/app.yaml", "--address", "127.0.0.1:9", "--timeout", "5x"], "--timeout '5x'"),
        (["deploy", "examples/echo/app.yaml", "--address", "127.0.0.1:9", "--timeout-s", "9000"], "and 2h"),
        (["loadtest", "examples/echo/app.yaml", "--shape", "zigzag"], "'--shape': 'zigzag' is not one of 'constant'"),
        (["loadtest", "http://127.0.0.1:9/v2/models/echo/infer"], "needs --payload"),
        (["loadtest", "examples/echo/app.yaml", "--weight", "echo"], "--weight 'echo'"),
        (["loadtest", "examples/echo/app.yaml", "--model", "nope"], "model 'nope' is not in app 'echo'"),
        (["tune", "examples/echo/app.yaml", "--slo-p95-ms", "50", "--model", "nope"], "--model 'nope'"),
        (["tune", "examples/fraud/app.yaml", "--slo-p95-ms", "50", "--model", "fraud"], "no deployment of its own"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], says: str) -> None:
    result = run_cli(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


def _served_count(fleet, model: str) -> float:
    """What the fleet's ingress counted for `model`, from its own /metrics."""
    text = httpx.get(f"{fleet.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelfleet_requests_total" and s.labels.get("model") == model
    )


def _echo_payload(tmp_path: Path) -> Path:
    payload = tmp_path / "echo.json"
    payload.write_text(
        json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    )
    return payload


@pytest.mark.parametrize("extra", [[], ["--workers", "1", "--shape", "step"]], ids=["local", "worker-process"])
def test_the_request_count_matches_what_the_server_counted(fleet, tmp_path: Path, extra: list[str]) -> None:
    """Trust in the numbers: the run's reported requests are within 5% of the ingress's own counter."""
    before = _served_count(fleet, "echo")
    result = run_cli(
        "loadtest",
        f"{fleet.url}/v2/models/echo/infer",
        "--payload",
        str(_echo_payload(tmp_path)),
        "--api-key",
        ADMIN_KEY,
        "--users",
        "4",
        "--duration",
        "4s",
        "--report",
        str(tmp_path / "out"),
        *extra,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    served = _served_count(fleet, "echo") - before
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failures"] == 0 and summary["requests"] > 30
    assert abs(summary["requests"] - served) <= 0.05 * served, (summary["requests"], served)
    assert summary["server_requests"] == served  # the command's own scrape agrees with ours
    if extra:
        assert [s["users"] for s in summary["stages"]] == [1, 2, 3, 4]


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# rich draws its live status line only on a terminal; these make it draw into the captured stderr too.
LIVE_ENV = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "300"}


def _live_lines(stderr: str) -> list[str]:
    """The live progress line each time rich redrew it."""
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", stderr)) if "req/s ok" in line]


def _loadtest_url(url: str, tmp_path: Path, *args: str) -> list[str]:
    return ["loadtest", url, "--payload", str(_echo_payload(tmp_path)), "--report", str(tmp_path / "out"), *args]


def test_a_dead_url_is_failures_not_throughput(tmp_path: Path) -> None:
    """Nothing listens on the port: every request is a refused connection, which is no req/s, no latency, and exit 3."""
    env = {k: v for k, v in os.environ.items() if k != "MODELFLEET_API_KEYS"} | LIVE_ENV
    url = f"http://127.0.0.1:{free_port()}/v2/models/echo/infer"
    result = run_cli(*_loadtest_url(url, tmp_path, "--users", "2", "--duration", "2s"), timeout=120, env=env)
    assert result.returncode == REQUESTS_FAILED == LOADTEST_REQUESTS_FAILED == 3, result.stdout + result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    refused = summary["requests"]
    assert refused > 0 and summary["failures"] == refused and summary["successes"] == 0
    assert summary["failures_by_kind"] == {"connection refused": refused}
    assert summary["rps"] == 0 and summary["p50_ms"] is None and summary["p99_ms"] is None
    assert all(p["rps"] == 0 and p["p50_ms"] is None for p in summary["timeline"])
    assert f"{refused} requests in" in result.stdout
    assert f"none succeeded; {refused} failed (connection refused: {refused})" in result.stdout
    live = _live_lines(result.stderr)
    assert live, result.stderr
    assert all(" 0.0 req/s ok " in line and "connection refused: " in line for line in live), live
    assert re.search(r"\b2s/2s ", live[-1]), live[-1]  # elapsed of the run's length, not a count of requests


class _SlowEcho(BaseHTTPRequestHandler):
    """Answers each POST after DELAY_S, one request per connection (HTTP/1.0), and counts the answers."""

    DELAY_S = 0.02

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.DELAY_S)
        body = b'{"outputs": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.count_answer()

    def log_message(self, *_: object) -> None:
        pass


class _CountingServer(ThreadingHTTPServer):
    def __init__(self, port: int):
        super().__init__(("127.0.0.1", port), _SlowEcho)
        self._lock, self.answered = threading.Lock(), 0

    def count_answer(self) -> None:
        with self._lock:
            self.answered += 1


def _cli_process(*args: str, keep_stdout: bool = True, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """`modelfleet ARGS` started from the repository, stderr piped (stdout too, unless not kept); by default
    without the session's API keys in its environment."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "MODELFLEET_API_KEYS"}
    return subprocess.Popen(
        [sys.executable, "-m", "modelfleet", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_server_stopped_mid_run_is_failures_not_faster_answers(tmp_path: Path) -> None:
    """A server that answers in 20 ms, then stops: the refusals after it stopped neither add req/s nor pull the
    percentiles below 20 ms; they are counted apart, by kind, and the command exits 3."""
    server = _CountingServer(free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v2/models/echo/infer"
    args = _loadtest_url(url, tmp_path, "--users", "2", "--duration", "3s", "--shape", "step")
    cli = _cli_process(*args)
    try:
        try:
            deadline = time.monotonic() + 60
            while not server.answered and cli.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # about a second of answers
        finally:
            server.shutdown()
            server.server_close()  # nothing listens any more: new connections are refused
        stdout, stderr = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == REQUESTS_FAILED, stdout + stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["successes"] == server.answered > 0
    assert summary["failures"] > 0 and summary["failures_by_kind"]["connection refused"] > 0
    assert sum(summary["failures_by_kind"].values()) == summary["failures"]
    assert summary["p50_ms"] >= 1000 * _SlowEcho.DELAY_S  # every success took the server's 20 ms
    assert summary["rps"] == pytest.approx(summary["successes"] / summary["duration_s"], rel=0.01)
    assert sum(p["rps"] for p in summary["timeline"]) <= summary["successes"]
    assert sum(s["requests"] for s in summary["stages"]) == summary["requests"]  # stages add up, settle seconds too
    assert f"{summary['successes']} succeeded: {summary['rps']:.1f} req/s, p50 {summary['p50_ms']} ms" in stdout
    assert f"{summary['failures']} failed (" in stdout and "connection refused: " in stdout


def _interrupt(
    cli: subprocess.Popen, started: Callable[[], bool], again_after_s: float | None = None
) -> tuple[int, str, list[psutil.Process]]:
    """Ctrl-C to `cli` once `started()` holds (and a second one `again_after_s` later): its exit code, its stderr and
    what it had started by then."""
    try:
        deadline = time.monotonic() + 120
        while not started() and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cli.poll() is None, "the command ended before it could be interrupted"
        children = psutil.Process(cli.pid).children(recursive=True)
        cli.send_signal(signal.SIGINT)
        if again_after_s is not None:
            time.sleep(again_after_s)
            cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=120)  # bounds a hang; the stop itself is quick
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    return cli.returncode, stderr, children


def _left_running(processes: list[psutil.Process]) -> list[str]:
    gone, alive = psutil.wait_procs(processes, timeout=10)
    return [" ".join(p.cmdline()[:4]) for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("extra", [[], ["--workers", "2"]], ids=["local", "worker-processes"])
def test_ctrl_c_ends_a_loadtest_with_130_and_reports_what_ran(tmp_path: Path, extra: list[str]) -> None:
    """As Locust and k6 do: the load stops there, and the summary and report cover the seconds that ran."""
    server = _CountingServer(free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v2/models/echo/infer"
    cli = _cli_process(*_loadtest_url(url, tmp_path, "--users", "4", "--duration", "5m", *extra), keep_stdout=False)
    try:
        code, stderr, started = _interrupt(cli, lambda: server.answered >= 50)  # well into the run
    finally:
        server.shutdown()
        server.server_close()
    assert code == 130, stderr
    said = stderr.strip().splitlines()[-1]  # no traceback, no gevent notice
    assert re.fullmatch(r"interrupted after \d+s \(the figures cover that much\); the load generator is stopped", said)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert _left_running(started) == []
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert 0 < summary["interrupted_at_s"] < 120 and summary["duration_s"] <= summary["interrupted_at_s"] + 6
    assert 50 <= summary["successes"] <= server.answered and summary["failures"] == 0, summary
    assert (tmp_path / "out" / "index.html").exists()


def test_a_second_ctrl_c_leaves_at_once_without_a_report(tmp_path: Path) -> None:
    server = _CountingServer(free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v2/models/echo/infer"
    cli = _cli_process(*_loadtest_url(url, tmp_path, "--users", "4", "--duration", "5m"), keep_stdout=False)
    try:
        # The second comes while the first is winding the run down (Locust's CSV writer's last pass takes a second).
        code, stderr, started = _interrupt(cli, lambda: server.answered >= 50, again_after_s=0.2)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 130, stderr
    assert stderr.strip() == "interrupted; the load generator is stopped", stderr
    assert _left_running(started) == []
    assert not (tmp_path / "out" / "summary.json").exists(), "a run left at once writes no report"


@pytest.mark.slow
@pytest.mark.own_ray
def test_ctrl_c_while_the_app_under_test_starts_stops_it_and_exits_130(tmp_path: Path) -> None:
    """`loadtest APP.yaml` starts `run`; Ctrl-C while its Ray comes up stops that Ray too, whatever its state."""
    cli = _cli_process(
        "loadtest", "examples/echo/app.yaml", "--report", str(tmp_path / "out"), keep_stdout=False, env=os.environ
    )

    def ray_started() -> bool:
        with contextlib.suppress(psutil.Error):  # a process may end between listing and naming it
            return any(p.name() == "raylet" for p in psutil.Process(cli.pid).children(recursive=True))
        return False

    code, stderr, started = _interrupt(cli, ray_started)
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted; the app and the load generator are stopped", stderr
    assert "Traceback" not in stderr
    assert _left_running(started) == [], "nothing of the app's Ray is left"


@pytest.mark.slow
@pytest.mark.own_ray
def test_tune_writes_a_valid_tuned_spec_and_states_the_gain(tmp_path: Path, browser) -> None:
    out = tmp_path / "out"
    result = run_cli(
        "tune",
        "examples/echo/app.yaml",
        "--slo-p95-ms",
        "200",
        "--max-trials",
        "2",  # the current config and one proposal, deployed as a rolling update: enough to check both paths
        "--report",
        str(out),
        "--users",
        "16",
        "--trial-duration",
        "5s",
        timeout=800,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out / "trials.csv", newline="") as trials:
        rows = list(csv.DictReader(trials))
    assert len(rows) == 2 and rows[0]["baseline"] == "True"
    assert all(not row["error"] for row in rows), rows  # each proposal deployed (a rolling update onto the run's app)
    tune = json.loads((out / "tune.json").read_text())
    best = next(t for t in tune["trials"] if t["number"] == tune["best"])
    assert best["best_rps"] == max(t["best_rps"] for t in tune["trials"]) > 0
    assert "p95 ≤ 200 ms" in tune["summary"] and tune["summary"] in result.stdout
    tuned = out / "echo.tuned.yaml"
    assert run_cli("validate", str(tuned)).returncode == 0
    model, knobs = yaml.safe_load(tuned.read_text())["models"][0], best["knobs"]["echo"]
    assert model["max_ongoing_requests"] == max(knobs["max_ongoing_requests"], 2 * (knobs["max_batch_size"] or 0), 1)
    assert model.get("embedded", False) == knobs["embedded"]
    assert (model.get("batching") or {}).get("max_batch_size") == knobs["max_batch_size"]
    assert_drawn(browser, out / "index.html", {"plot-tradeoff": "scatter", "plot-trials": "bar"})


def test_tune_without_a_configuration_in_the_slo_is_a_result_not_a_failure() -> None:
    from loadtests.records import Trial, TuneRecord
    from modelfleet.cli.load import NO_CONFIGURATION_MET_THE_SLO, tune_exit_code

    measured = Trial(number=0, knobs={}, baseline=True, best_rps=0.0)
    broken = Trial(number=1, knobs={}, error="did not deploy")
    record = TuneRecord(app="echo", slo_p95_ms=1, max_trials=2, trials=[measured, broken])
    assert tune_exit_code(record) == NO_CONFIGURATION_MET_THE_SLO == 3
    assert tune_exit_code(record.model_copy(update={"trials": [broken]})) == 1  # nothing was measured: a failure
    assert tune_exit_code(record.model_copy(update={"best": 0})) == 0
