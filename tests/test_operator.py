"""The operator's path past `run`: finding the running Ray without being told, never hanging, stopping when asked.

Every command here is the real command line against the session's `modelfleet run` (or a small `run` of its
own, for losing Ray under it). Stopping on SIGTERM, quietly, is checked where the session's fleet stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from groundwork import local_rays
from groundwork.processes import free_port, session_pids, stop_session
from loadtests.app_process import AppProcess
from tests.helpers import ROOT, Fleet, fleet_record, run_cli

ECHO_SPEC = ROOT / "examples" / "echo" / "app.yaml"


def _home_with(tmp_path: Path, *records: Path) -> dict[str, str]:
    """An environment whose MODELFLEET_HOME holds only these records of running Rays (and no RAY_ADDRESS)."""
    (tmp_path / "rays").mkdir(parents=True, exist_ok=True)
    for record in records:
        shutil.copy(record, tmp_path / "rays" / record.name)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MODELFLEET_API_KEYS")}
    return {**env, "MODELFLEET_HOME": str(tmp_path)}


def test_a_serving_run_records_how_to_reach_its_ray(fleet: Fleet, tmp_path: Path) -> None:
    recorded = local_rays.modelfleet_home() / "rays" / f"{fleet.process.pid}.json"
    assert recorded.exists(), "a serving `run` records its Ray under MODELFLEET_HOME/rays"
    assert json.loads(recorded.read_text()) == json.loads(fleet_record(fleet, tmp_path).read_text())


def test_status_finds_the_running_run_without_an_address(fleet: Fleet, tmp_path: Path) -> None:
    env = _home_with(tmp_path / "home", fleet_record(fleet, tmp_path))
    status = run_cli("status", "--json", env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    assert {row["app"] for row in json.loads(status.stdout)} >= {"fleet"}


def test_no_running_ray_is_one_line_saying_what_to_pass(tmp_path: Path) -> None:
    for command in (["status"], ["deploy", str(ECHO_SPEC)]):
        result = run_cli(*command, env=_home_with(tmp_path), timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "no `modelfleet run` or local-sim cluster is running" in lines[0] and "--address" in lines[0]


def test_a_record_left_by_a_dead_run_is_not_an_answer(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "rays").mkdir()
    stale = tmp_path / "rays" / f"{dead.pid}.json"
    stale.write_text(
        json.dumps(
            {"kind": "run", "name": "gone", "ray_address": "127.0.0.1:9", "url": "", "pid": dead.pid, "command": ["x"]}
        )
    )
    result = run_cli("status", env=_home_with(tmp_path), timeout=60)
    assert result.returncode == 2 and "no `modelfleet run`" in result.stderr, result.stderr
    assert not stale.exists(), "whoever finds a stale record removes it"


def test_two_running_rays_are_named_not_guessed(fleet: Fleet, tmp_path: Path) -> None:
    record = fleet_record(fleet, tmp_path)
    env = _home_with(tmp_path / "home", record)
    twin = json.loads(record.read_text())
    me = psutil.Process()
    twin.update(name="other", ray_address="127.0.0.1:1", pid=me.pid, command=me.cmdline())
    (tmp_path / "home" / "rays" / f"{me.pid}.json").write_text(json.dumps(twin))
    result = run_cli("status", env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "2 Rays run on this machine" in result.stderr and "'other' at 127.0.0.1:1" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_driver_stuck_in_ray_ends_on_the_first_signal(fleet: Fleet, sig: signal.Signals) -> None:
    """Without Ray's single-machine mode a driver waits for ever inside Ray's core, holding the GIL: the state
    the README's snippet used to leave users in. Ctrl-C (or SIGTERM) must still end the command there and then."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}  # forces the wait (our default would be 0)
    stuck = subprocess.Popen(
        [sys.executable, "-m", "modelfleet", "status", "--address", fleet.ready()["ray_address"]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(5)  # well inside ray.init's wait for the GCS at the machine's other address
        assert stuck.poll() is None, "the driver was expected to be waiting on Ray"
        stuck.send_signal(sig)
        code = stuck.wait(timeout=20)  # it ends at once; 20 s only bounds a failure
    finally:
        if stuck.poll() is None:
            stuck.kill()
            stuck.wait()
    assert code == -sig, f"ended by {sig.name} (a shell shows {128 + sig}), got {code}"


def test_a_drivers_notices_of_the_cluster_go_to_stderr_and_never_into_the_answer(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A Ray driver prints the cluster's events on sys.stdout from a thread of its own, at any moment: a node's
    death once came out in the middle of `status --json` and broke the script reading it."""
    from ray._private.worker import print_to_stdstream

    from modelfleet.cli.console import out, ray_notices_on_stderr

    notice = {"lines": ["The node with node id: 42 has been marked dead"], "pid": "raylet", "is_err": False}
    with ray_notices_on_stderr():
        print_to_stdstream(notice, ignore_prefix=False)  # what Ray's listen_error_messages thread calls
        out.print('{"answer": 1}')
    print_to_stdstream({**notice, "lines": ["after the driver left"]}, ignore_prefix=False)
    captured = capfd.readouterr()
    assert captured.out.splitlines()[0] == '{"answer": 1}', captured.out
    assert "marked dead" in captured.err and "marked dead" not in captured.out
    assert "after the driver left" in captured.out  # only while a driver: the process's stdout is itself again


def test_connect_gives_a_driver_the_fleet_and_says_when_it_is_too_late(fleet: Fleet, tmp_path: Path) -> None:
    env = {**_home_with(tmp_path / "home", fleet_record(fleet, tmp_path)), "PYTHONPATH": str(ROOT)}
    snippet = (
        "from serve_apps import connect\n"
        "connect()  # the `modelfleet run` on this machine\n"
        "import numpy as np\n"
        "from ray import serve\n"
        "out = serve.get_app_handle('fleet').infer.remote('echo', {'x': np.ones((1, 3), 'float32')}).result()\n"
        "print(out['y'].tolist())\n"
    )
    ran = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0 and ran.stdout.strip().splitlines()[-1] == "[[1.0, 1.0, 1.0]]", ran.stderr[-3000:]

    late = "import ray\nfrom serve_apps import connect\nconnect()\n"
    ran = subprocess.run([sys.executable, "-c", late], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1 and "must run before `import ray`" in ran.stderr, ran.stderr[-3000:]


def _embedded_echo(tmp_path: Path) -> Path:
    """The echo example served inside its ingress: a `run` of one replica, for tests of `run` itself (each starts a
    Ray of its own, and a replica costs seconds of CPU to start)."""
    spec = yaml.safe_load(ECHO_SPEC.read_text())
    spec["models"][0]["embedded"] = True
    del spec["models"][0]["autoscaling"]  # the ingress's, for an embedded model
    path = tmp_path / "echo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.own_ray
def test_run_exits_with_one_line_when_its_ray_dies(tmp_path: Path) -> None:
    with AppProcess(_embedded_echo(tmp_path), tmp_path / "run.log") as app:
        assert app.proc is not None
        raylet = next(p for p in psutil.Process(app.proc.pid).children() if p.name() == "raylet")
        raylet.kill()
        code = app.proc.wait(timeout=120)  # `run` checks twice a second; Ray's own notice took ~75 s
    log = app.log_path.read_text()
    assert code == 1, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("failed: Ray stopped under `run` (Ray's raylet") and "nothing is served" in last, last


@pytest.mark.slow
@pytest.mark.own_ray
def test_sigterm_stops_run_and_all_its_processes_even_when_its_ray_hangs(tmp_path: Path) -> None:
    """A GCS that stops answering (suspended here) used to hold `run`'s shutdown for ever after SIGTERM: only
    SIGKILL ended it, and Ray's processes with it. `run` bounds its stop and ends, by pid, what it started."""
    app = AppProcess(_embedded_echo(tmp_path), tmp_path / "run.log")
    with app:
        assert app.proc is not None
        gcs = next(p for p in psutil.Process(app.proc.pid).children() if p.name() == "gcs_server")
        gcs.suspend()
        app.proc.send_signal(signal.SIGTERM)
        code = app.proc.wait(timeout=60)  # bounds a failure; `run` promises Docker's 10 s grace period
        leader = app.proc.pid
        app.proc = None  # stopped: nothing for the context manager to stop
    log = app.log_path.read_text()
    assert code == 143, log[-3000:]
    assert log.strip().splitlines()[-1].startswith("stopped"), log[-3000:]
    assert session_pids(leader) == [], "every process `run` started is gone with it"


@pytest.mark.slow
@pytest.mark.own_ray
def test_sigterm_stops_run_cleanly_when_serve_outlasts_its_graceful_shutdown(tmp_path: Path) -> None:
    """A Serve controller that does not finish its graceful shutdown in time (suspended here; on CI, a busy one)
    used to leave a thread waiting on it while Ray shut down under it, and Ray's core then ended `run` with exit
    code 1 ("The core worker has already been shutdown"). The wait is bounded by Serve's own timeout instead."""
    app = AppProcess(_embedded_echo(tmp_path), tmp_path / "run.log")
    with app:
        assert app.proc is not None
        controller = next(
            p for p in psutil.Process(app.proc.pid).children(recursive=True) if "ServeController" in _cmdline(p)
        )
        controller.suspend()
        app.proc.send_signal(signal.SIGTERM)
        code = app.proc.wait(timeout=60)
        leader = app.proc.pid
        app.proc = None
    log = app.log_path.read_text()
    assert code == 143, log[-3000:]
    assert log.rstrip().endswith("stopped."), log[-3000:]  # Serve's stop was cut short, Ray's was not
    assert "Controller failed to shut down" not in log, "Ray's notice reached the console"
    assert session_pids(leader) == [], "every process `run` started is gone with it"


def _cmdline(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())
    return ""


@pytest.mark.own_ray
def test_ctrl_c_while_ray_starts_leaves_none_of_its_processes(tmp_path: Path) -> None:
    """Ctrl-C while ray.init is still starting Ray's processes: `run` stops, and so do they (Ray's agents used to
    outlive it, orphaned)."""
    run = subprocess.Popen(
        [sys.executable, "-m", "modelfleet", "run", str(ECHO_SPEC), "--port", str(free_port())],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None:
            with contextlib.suppress(psutil.Error):
                if any(p.name() == "raylet" for p in psutil.Process(run.pid).children()):
                    break
            time.sleep(0.05)
        assert run.poll() is None, "`run` ended before Ray started"
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            stop_session(run.pid, grace_s=0, first=signal.SIGKILL)
    assert run.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "stopped.", stderr[-3000:]
    assert session_pids(run.pid) == [], "every process `run` started is gone with it"


def _echo_app(tmp_path: Path, **fields: object) -> Path:
    spec = yaml.safe_load(ECHO_SPEC.read_text())
    spec.update(fields)
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_deploy_names_the_app_holding_its_route_prefix(fleet: Fleet, tmp_path: Path) -> None:
    app = _echo_app(tmp_path, name="second")  # route_prefix "/", which the fleet holds
    result = run_cli("deploy", str(app), "--address", fleet.ready()["ray_address"], timeout=240)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert "route prefix / is taken by app 'fleet'" in lines[0] and "route_prefix: /second" in lines[0], lines


def test_deploy_that_cannot_fit_a_fixed_size_ray_fails_at_once(fleet: Fleet, tmp_path: Path) -> None:
    spec = yaml.safe_load(ECHO_SPEC.read_text())
    spec["models"][0]["resources"] = {"num_cpus": 64}
    app = _echo_app(tmp_path, name="huge", route_prefix="/huge", models=spec["models"])
    result = run_cli("deploy", str(app), "--address", fleet.ready()["ray_address"], timeout=240)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert "app 'huge' needs 64.5 CPUs for its first replicas (ingress 0.5, echo 64)" in lines[0], lines
    assert "no autoscaler to add a node" in lines[0], lines
