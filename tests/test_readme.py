"""Every code block of the README, run as written against the session's live `modelfleet run`, or skipped by name.

The only edits are where the README's reader and this test differ: the fleet listens on a free port rather
than 8000 (and asks for an API key, which curl finds in its own config file), and the fraud app is deployed
beside the fleet as `fraud_test` on its own route prefix. A block this test does not know fails it: a new
example must be run here, or its skip must say why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.fraud_app import APP as FRAUD_APP
from tests.helpers import ADMIN_KEY, ROOT, Fleet, fleet_record, run_cli

BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)

# Blocks shown but not run here, by their first line, with the reason (and where the same thing is tested).
NOT_RUN = {
    "make demo": "the two commands: `make test` is this run; `make demo` serves what the fleet fixture serves",
    "serving app 'fleet' at": "output `run` prints (the fleet fixture checks its ready file instead)",
    "$ modelfleet validate app.yaml": "output; tests/test_spec_cli.py checks that message",
    "- name: fraud": "a spec excerpt",
    "- name: merchant": "a spec excerpt",
    "name: modelfleet-aws": "a cluster spec excerpt; tests/test_cluster_render.py renders every example cluster",
    "ingress:": "a spec excerpt",
    "models:": "a spec excerpt",
    "modelfleet slo rules": "needs an app with slo: and a Prometheus with history; tests/test_slo.py runs rules and "
    "report against a real Prometheus, tests/test_audit.py verify and query",
    "name: digits": "a spec excerpt",
    "modelfleet loadtest": "minutes of load; tests/test_loadtest.py runs both commands with shorter runs",
    "# Train digits twice": "minutes of training and load; tests/test_examples_register.py runs --register and the "
    "faulty version, tests/test_rollout.py every rollout outcome with short intervals",
    "modelfleet cluster render": "`ray up` needs a cloud account; tests/test_cluster_render.py renders these specs",
    "sudo .venv/bin/python -m cluster.testbed up": "minutes and root; tests/test_onprem_cluster.py runs these steps "
    "on a test bed of its own (make test-cluster)",
}
# Blocks run here: their first line -> the checks on what they print.
RUN = {
    "curl -s localhost:8000/v2/models/embeddings/infer": "curl",
    "curl -s localhost:8000/v1/models/embeddings:predict": "curl",
    "import httpx": "python-http",
    ".venv/bin/python -m examples.fraud.train": "fraud-commands",
    "from serve_apps import connect": "python-handles",
    "modelfleet status": "cluster-commands",
    "modelfleet keys create": "keys",
}


def _kind(block: str) -> str:
    first = block.strip().splitlines()[0]
    for table in (RUN, NOT_RUN):
        for start, value in table.items():
            if first.startswith(start):
                return value if table is RUN else "not run"
    raise AssertionError(f"README block starting {first!r} is neither run by this test nor skipped with a reason")


def _commands(block: str) -> list[str]:
    """Shell commands of a bash block: continued lines (a trailing backslash, or an open quote) joined; comment and
    output lines (`#`) dropped."""
    commands, current = [], ""
    for line in block.splitlines():
        if not current and line.lstrip().startswith("#"):
            continue
        continues = line.endswith("\\")
        current += (line[:-1].rstrip() + " ") if continues else line + "\n"
        if not continues and _complete(current):
            commands.append(current.strip())
            current = ""
    return commands


def _complete(command: str) -> bool:
    try:
        return bool(shlex.split(command, comments=True))
    except ValueError:  # a quote still open: the command goes on on the next line
        return False


def _blocks(kind: str) -> list[str]:
    found = [body for _, body in BLOCKS if _kind(body) == kind]
    assert found, f"no README block of kind {kind!r} any more: update this test's tables"
    return found


@pytest.fixture(scope="module")
def shell_env(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """curl with the session's admin key from its config file; `modelfleet` on PATH; only the fleet recorded."""
    home = tmp_path_factory.mktemp("readme")
    (home / ".curlrc").write_text(f'header = "Authorization: Bearer {ADMIN_KEY}"\n')
    fleet_record(fleet, home / "modelfleet")  # the fleet, as its `run` records itself
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MODELFLEET_API_KEYS")}
    return {
        **env,
        "CURL_HOME": str(home),
        "MODELFLEET_HOME": str(home / "modelfleet"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "PYTHONPATH": str(ROOT),
    }


def _shell(command: str, env: dict[str, str], cwd: Path = ROOT) -> str:
    done = subprocess.run(["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def _to_fleet(text: str, fleet: Fleet) -> str:
    return re.sub(r"(localhost|127\.0\.0\.1):8000", fleet.url.removeprefix("http://"), text)


def test_every_readme_block_is_run_or_skipped_with_a_reason() -> None:
    assert len(BLOCKS) >= 15
    kinds = {_kind(body) for _, body in BLOCKS}
    assert kinds >= set(RUN.values())


def test_the_curl_examples_answer(fleet: Fleet, shell_env: dict[str, str]) -> None:
    for block in _blocks("curl"):
        for command in _commands(block):
            answer = json.loads(_shell(_to_fleet(command, fleet), shell_env))
            assert "error" not in answer, (command, answer)
            assert answer.get("outputs") or answer.get("predictions"), (command, answer)


def test_the_python_http_example_prints_class_probabilities(fleet: Fleet, shell_env: dict[str, str]) -> None:
    (code,) = _blocks("python-http")
    code = _to_fleet(code, fleet).replace(
        "json=body)", f"json=body, headers={{'Authorization': 'Bearer {ADMIN_KEY}'}})"
    )
    done = subprocess.run([sys.executable, "-c", code], env=shell_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    shape, probabilities = done.stdout.split("]", 1)
    assert shape == "[4, 10" and len(json.loads(probabilities.strip())) == 10


def test_the_fraud_curl_gives_the_documented_answer(fraud: str, shell_env: dict[str, str]) -> None:
    (block,) = _blocks("fraud-commands")
    commands = _commands(block)
    assert commands[0].startswith(".venv/bin/python -m examples.fraud.train")  # the fixture trained it (same code)
    assert commands[1].startswith(".venv/bin/modelfleet run examples/fraud/app.yaml")  # served here as `fraud`
    (curl,) = [c for c in commands if c.startswith("curl")]
    answer = json.loads(_shell(curl.replace("localhost:8000", fraud.removeprefix("http://")), shell_env))
    (prediction,) = answer["predictions"]
    documented = re.search(r'"top_features":(\[[^\]]*\])', block)
    assert documented is not None
    assert prediction["fraud_probability"] > 0.9 and prediction["top_features"] == json.loads(documented[1])


def test_the_handle_example_runs_as_written(fraud: str, shell_env: dict[str, str]) -> None:
    (code,) = _blocks("python-handles")
    code = code.replace('get_app_handle("fraud")', f'get_app_handle("{FRAUD_APP}")')
    done = subprocess.run([sys.executable, "-c", code], env=shell_env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    # numpy's print of 4 probabilities, then of the (4, 3) top features, over several lines
    probabilities = re.match(r"\[([^\]]*)\]", done.stdout)
    assert probabilities is not None and all(0 <= float(p) <= 1 for p in probabilities[1].split()), done.stdout
    assert len(probabilities[1].split()) == 4 and done.stdout.count("['") == 4, done.stdout


def test_the_cluster_commands_find_the_running_fleet(shell_env: dict[str, str]) -> None:
    (block,) = _blocks("cluster-commands")
    status, deploy = _commands(block)
    assert "fleet" in _shell(status, shell_env)
    assert "--address HOST:PORT" in deploy  # a placeholder for a cluster's head: tests/test_local_sim.py deploys it


def test_the_keys_examples_create_list_and_revoke(tmp_path: Path) -> None:
    (block,) = _blocks("keys")
    said = []
    for command in _commands(block):
        args = shlex.split(command, comments=True)
        assert args[0] == "modelfleet"
        result = run_cli(*[a for a in args[1:] if a != "[--json]"], cwd=tmp_path, timeout=60)
        assert result.returncode == 0, (command, result.stderr)
        said.append(result.stdout + result.stderr)
    create, listed, revoked = said
    assert "mf_" in create and "ci-bot" in listed and "invoke:digits" in listed and "ci-bot" in revoked
    assert "ci-bot" not in (tmp_path / "keys.yaml").read_text()
