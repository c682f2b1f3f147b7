"""Shared fixtures: one real `modelfleet run` (one Ray) per test session.

The server under test is the real command line, started as a user would
start it, serving the example fleet plus two test-only models: `types` (a
builtin echo over every datatype) and `faulty` (a real TorchScript model that
raises on negative input, to prove a model error is a 500 and not an outage).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from groundwork.processes import stop_process_tree
from tests.fixtures.fraud_app import fraud  # noqa: F401 - a session fixture, shared by two test modules
from tests.helpers import (
    ADMIN_KEY,
    BODY_TIMEOUT_S,
    DIGITS_KEY,
    FLEET_SPEC,
    HEADER_TIMEOUT_S,
    MAX_BODY_MB,
    REQUEST_TIMEOUT_S,
    ROOT,
    TYPES_MODEL,
    Fleet,
    deletions_finished,
    free_port,
    wait_until,
)


def _uses_ray(item: pytest.Item) -> bool:
    return "fleet" in getattr(item, "fixturenames", ()) or item.get_closest_marker("own_ray") is not None


# With `-n 2` (`make test`): where the workers list the tests that use a Ray, for the scheduler below to keep
# them together. Set by the controller before it starts the workers, which inherit it.
RAY_TESTS_FILE = "MODELFLEET_TEST_RAY_TESTS_FILE"
_SCHEDULE_FOLDER = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--without-ray",
        action="store_true",
        help="Leave out every test that starts or uses a Ray (`make test-fast`: the everyday lane, in about a minute).",
    )


def pytest_configure(config: pytest.Config) -> None:
    if (
        config.pluginmanager.has_plugin("xdist")
        and config.getoption("numprocesses", None)
        and not hasattr(config, "workerinput")
    ):
        folder = Path(tempfile.mkdtemp(prefix="modelfleet-test-schedule-"))
        config.stash[_SCHEDULE_FOLDER] = folder
        os.environ[RAY_TESTS_FILE] = str(folder / "ray-tests.txt")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller removes the listing's folder it made (the workers only write into it), and only that: the
    variable may name a file in a folder it did not make."""
    folder = config.stash.get(_SCHEDULE_FOLDER, None)
    if folder is not None:
        os.environ.pop(RAY_TESTS_FILE, None)
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a Ray run after the others, in this order: those that start a Ray of their own, then those
    that use the session's fleet. Under pytest-xdist, each worker also lists them for the scheduler.

    One Ray at a time: the fleet's Ray starts with the first test that needs it and runs to the end, so the tests
    that start a Ray of their own (local-sim, a `ray start` head, loadtest and tune of a spec) never share the two
    cores with it, which made each of them up to half again as slow.
    """
    if config.getoption("without_ray"):
        with_ray = [item for item in items if _uses_ray(item)]
        if with_ray:
            config.hook.pytest_deselected(items=with_ray)
            items[:] = [item for item in items if not _uses_ray(item)]
    items.sort(key=lambda item: (_uses_ray(item), "fleet" in getattr(item, "fixturenames", ())))
    listing = os.environ.get(RAY_TESTS_FILE)
    if listing and os.environ.get("PYTEST_XDIST_WORKER"):
        partial = Path(f"{listing}.{os.environ['PYTEST_XDIST_WORKER']}")
        partial.write_text("".join(f"{item.nodeid}\n" for item in items if _uses_ray(item)))
        os.replace(partial, listing)  # every worker collects the same tests: any complete copy will do


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist's scope scheduling, with every test that uses a Ray in one scope (one worker, in order) and
    every other test a scope of its own: one worker runs the Ray tests while the other takes the Ray-free ones (a
    sixth of the suite's time, mostly CPU) as the Ray tests wait on Ray.

    (`--dist loadgroup` with xdist_group marks would say this, but pytest-xdist 3.8 renames the node ids it groups
    by through an attribute pytest 9.2 no longer reads.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class RayTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if nodeid in _ray_tests() else nodeid

    return RayTestsTogether(config, log)


@functools.cache
def _ray_tests() -> frozenset[str]:
    """Read once the workers have collected (the scheduler asks only then)."""
    return frozenset(Path(os.environ[RAY_TESTS_FILE]).read_text().splitlines())


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under pytest-xdist, the Ray-free tests run at Ray workers' own niceness and below (Ray starts its workers
    at 15; a process at 0 beside them would take most of the two cores from the Ray tests, whose deadlines then
    fail). A worker only lowers itself: the Ray tests it may have run before keep their processes' niceness."""
    if os.environ.get("PYTEST_XDIST_WORKER") and not _uses_ray(item) and os.getpriority(os.PRIO_PROCESS, 0) < 19:
        os.setpriority(os.PRIO_PROCESS, 0, 19)


@pytest.fixture(scope="session", autouse=True)
def modelfleet_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's own MODELFLEET_HOME: what `run` and `cluster up` record stays out of the user's home."""
    home = tmp_path_factory.mktemp("modelfleet-home")
    os.environ["MODELFLEET_HOME"] = str(home)
    return home


@pytest.fixture
def environ_kept():
    """For tests calling `run` or `deploy` in-process: they set Ray's environment (before loading the spec, for Ray
    reads it once), which must not carry over to the rest of the session."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _write_faulty_model(path: Path) -> None:
    import torch

    class Faulty(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x < 0).any()):
                raise RuntimeError("faulty model: negative input")
            return x * 2

    torch.jit.save(torch.jit.script(Faulty()), str(path))


def _test_fleet(tmp: Path) -> Path:
    """The example fleet with absolute artifact paths, plus the test-only models."""
    spec = yaml.safe_load(FLEET_SPEC.read_text())
    for model in spec["models"]:
        if "artifact" in model and "://" not in model["artifact"]["uri"]:
            uri = model["artifact"]["uri"]
            model["artifact"]["uri"] = str((FLEET_SPEC.parent / uri).resolve()) + ("/" if uri.endswith("/") else "")
    import hashlib

    _write_faulty_model(tmp / "faulty.pt")
    faulty_sha256 = hashlib.sha256((tmp / "faulty.pt").read_bytes()).hexdigest()  # TorchScript is code: pinned
    from safetensors.torch import save_file

    save_file({}, str(tmp / "slow.safetensors"))  # SlowNet has no weights
    tiny = {"num_cpus": 0.05}  # the session Ray (2 CPUs) also holds the apps later tests deploy beside the fleet
    spec["models"] += [
        {
            **TYPES_MODEL,
            "resources": tiny,
            "embedded": True,  # answered inside the ingress: every datatype through the in-process path too
            # every request and response of every datatype logged (tests/test_payload_logging.py), the text redacted
            "logging": {
                "sample_rate": 1.0,
                "redact": ["in_bytes", "out_bytes"],
                "destination": str(tmp / "payloads"),
                "flush_s": 0.5,
            },
        },
        {
            "name": "faulty",
            "format": "torchscript",
            "artifact": {"uri": str(tmp / "faulty.pt"), "sha256": faulty_sha256},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
            "resources": {**tiny, "num_gpus": 1},  # no GPU here: must run on CPU, with a warning
        },
        {
            "name": "slow",
            "format": "safetensors",
            "module": "tests.fixtures.tiny:SlowNet",
            "artifact": {"uri": str(tmp / "slow.safetensors")},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
            "resources": {**tiny, "pool": "cpu"},  # the deploy only succeeds if the pool resource exists
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
        },
    ]

    def same_model(name: str) -> dict:
        """The fields that make `name`'s model what it is (not how it is served)."""
        model = next(m for m in spec["models"] if m["name"] == name)
        return {k: model[k] for k in ("format", "module", "artifact", "inputs", "outputs")}

    # Scales within a second or two of its load, so the tests that watch replicas come and go stay short.
    eager = {"upscale_delay_s": 0, "downscale_delay_s": 2, "metrics_interval_s": 0.5, "look_back_period_s": 1}
    hardly_any_cpu = {"num_cpus": 0.01}  # their extra replicas must not crowd out the apps deployed later
    spec["models"] += [
        {  # `slow` that may scale to 2, on requests: one call per replica carries them all (test_serving.py)
            **same_model("slow"),
            "name": "elastic",
            "resources": dict(hardly_any_cpu),  # a copy: yaml.safe_dump writes a shared dict as an alias
            "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, **eager},
            "max_ongoing_requests": 1,
        },
        {  # digits with no replica while idle, answered by the app's standby replica until its own starts;
            # its artifact is the registry's digits@champion (version 2, registered below), pinned by `run`
            **same_model("digits"),
            "artifact": {"uri": "models:/digits@champion"},
            "name": "sleepy",
            "resources": dict(hardly_any_cpu),
            "autoscaling": {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, **eager},
        },
    ]
    twin_weights = same_model("digits")["artifact"]
    spec["models"].append(
        {  # digits served as three versions (the same weights): 2 takes half the units, 3 gets a copy of every request
            **same_model("digits"),
            "name": "twin",
            "resources": {"num_cpus": 0.001},  # three deployments in a Ray whose CPUs the other apps nearly fill
            "candidates": [
                {"version": "2", "artifact": dict(twin_weights), "weight": 50},
                {"version": "3", "artifact": dict(twin_weights), "shadow": 100},
            ],
            "split": "sticky",
        }
    )
    spec["standby"] = {"num_replicas": 1, "num_cpus": 0.01, "idle_s": 5}
    spec["models"].append(
        {  # two replicas of a deployed echo, for the replica-kill test (test_faults.py)
            "name": "sturdy",
            "format": "builtin",
            "module": "echo",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
            "resources": {"num_cpus": 0.05},
            "autoscaling": {"min_replicas": 2, "max_replicas": 2},
        }
    )
    spec["ingress"] = {
        **spec.get("ingress", {}),
        "max_body_mb": MAX_BODY_MB,
        "request_timeout_s": REQUEST_TIMEOUT_S,
        # Short deadlines, so the fuzzers' truncated requests are cut off quickly.
        "header_timeout_s": HEADER_TIMEOUT_S,
        "body_timeout_s": BODY_TIMEOUT_S,
    }
    _register_digits_champion(Path(same_model("digits")["artifact"]["uri"]))
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _register_digits_champion(weights: Path) -> None:
    """digits registered twice in the session's registry (MODELFLEET_HOME), digits@champion -> version 2."""
    from registry import Registry, publish

    registry = Registry()
    try:
        uri, sha256 = publish(str(weights))
        for _ in range(2):
            registered = registry.register(
                "digits",
                artifact_uri=uri,
                sha256=sha256,
                format="safetensors",
                module="examples.digits.model:DigitsNet",
            )
        registry.set_alias("digits", "champion", registered.version)
    finally:
        registry.close()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory, modelfleet_home: Path) -> Fleet:
    tmp = tmp_path_factory.mktemp("fleet")
    spec_path = _test_fleet(tmp)
    port = free_port()
    log_path, ready_path = tmp / "modelfleet-run.log", tmp / "ready.json"
    env = {
        **os.environ,
        "MODELFLEET_CACHE_DIR": str(tmp / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MODELFLEET_API_KEYS": f"{ADMIN_KEY}=admin;{DIGITS_KEY}=invoke:digits",
        "PYTHONPATH": str(ROOT),  # replicas import tests.fixtures
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelfleet",
                "run",
                str(spec_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ready-file",
                str(ready_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )
    fleet = Fleet(f"http://127.0.0.1:{port}", spec_path, log_path, process, ready_path)
    try:
        wait_until(ready_path.exists, 300, "modelfleet run", process, log_path)  # written once serving
        assert fleet.ready()["url"] == fleet.url and fleet.ready()["pid"] == process.pid
        yield fleet
    finally:
        try:
            deletions_finished()  # what tests deleted from the fleet's Ray in the background
        finally:
            # SIGTERM, as `timeout`, systemd and `docker stop` send it (Ctrl-C takes the same path in `run`).
            stop_process_tree(process, signal.SIGTERM, grace_s=90)
    # `run` must stop Serve and Ray cleanly, and quietly: a failure here errors the session.
    log = fleet.log()
    assert process.returncode == 143, f"modelfleet run exited {process.returncode} on SIGTERM:\n{log[-4000:]}"
    assert log.rstrip().endswith("stopped."), log[-4000:]
    for noise in ("Cannot deregister autoscaling state", "Controller failed to shut down", "graceful_shutdown failed"):
        assert noise not in log, f"Ray's notice {noise!r} reached the console"
    assert not fleet.ready_path.exists(), "run removes its ready file when it stops"
    assert not (modelfleet_home / "rays" / f"{process.pid}.json").exists(), "and its record of its Ray"
    from registry import Registry

    registry = Registry()
    try:
        newest = registry.deployments("digits")[-1]  # sleepy's models:/digits@champion
    finally:
        registry.close()
    assert (newest.app, newest.version, newest.outcome) == ("fleet", 2, "stopped"), "and records it no longer serves"


@pytest.fixture()
def client(fleet: Fleet):
    with fleet.client() as c:
        yield c


@pytest.fixture(scope="session")
def ray_address(fleet: Fleet) -> str:
    """The Ray head `modelfleet run` started for this session (from its --ready-file)."""
    return fleet.ready()["ray_address"]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium, driven by Playwright, for the HTML reports."""
    from tests.fixtures.browser import BROWSER_ARGS, CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (`make test` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made on the fly (trustme), a server certificate for 127.0.0.1/localhost and a client one: PEM files."""
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    ca.issue_cert("client@example.org").private_key_and_cert_chain_pem.write_to_path(str(folder / "client.pem"))
    return folder
