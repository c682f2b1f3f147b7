"""Security hardening at the command line: Ray's token file, Ray's auth mode, keyless exposure, plaintext keys.

All but the last two run in seconds and start no Ray: each refusal or fix happens before Ray would start.
The last two read what the session's real `modelfleet run` (the `fleet` fixture) left behind.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from groundwork.processes import session_pids
from modelfleet.cli import app
from tests.helpers import ROOT, Fleet, free_port, run_cli

ECHO = ROOT / "examples" / "echo" / "app.yaml"
KUBERAY = ROOT / "examples" / "clusters" / "kuberay.yaml"
KEYS = "mf_hardening_test_key_0123456789abcdefghij=admin"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _env(**extra: str) -> dict[str, str]:
    """This environment without keys or Ray settings that would change what is tested, plus `extra`."""
    unset = ("MODELFLEET_API_KEYS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
    return {**{k: v for k, v in os.environ.items() if k not in unset}, **extra}


def _nothing_listens() -> str:
    return f"127.0.0.1:{free_port()}"


def _one_line(stderr: str) -> str:
    line = stderr.strip()
    assert line and "\n" not in line, stderr
    return line


def _world_readable_token(folder: Path) -> Path:
    """A token file as Ray 2.60 writes it: 0644 in a 0755 folder."""
    folder.mkdir(parents=True)
    token = folder / "auth_token"
    token.write_text("0" * 32)
    folder.chmod(0o755)
    token.chmod(0o644)
    return token


# 1. Ray's token file is private whenever we start or connect to Ray.


def test_deploy_makes_rays_token_file_private_before_connecting(tmp_path: Path) -> None:
    token = _world_readable_token(tmp_path / "home" / ".ray")
    result = run_cli(
        "deploy", str(ECHO), "--address", _nothing_listens(), env=_env(HOME=str(tmp_path / "home")), timeout=60
    )
    assert result.returncode == 1 and "cannot connect" in result.stderr, result.stderr
    assert (_mode(token), _mode(token.parent)) == (0o600, 0o700)


def test_a_token_file_named_by_ray_auth_token_path_is_made_private_too(tmp_path: Path) -> None:
    token = _world_readable_token(tmp_path / "secrets")
    (tmp_path / "home").mkdir()
    env = _env(HOME=str(tmp_path / "home"), RAY_AUTH_TOKEN_PATH=str(token))
    result = run_cli("deploy", str(ECHO), "--address", _nothing_listens(), env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert (_mode(token), _mode(token.parent)) == (0o600, 0o700)
    # Ray writes a token it generates to ~/.ray: that folder is made private before Ray could write there.
    assert _mode(tmp_path / "home" / ".ray") == 0o700


def test_a_shared_folder_keeps_its_mode_but_the_token_in_it_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from groundwork.ray_env import secure_ray_token

    shared = tmp_path / "shared"
    token = _world_readable_token(shared)
    shared.chmod(0o1777)  # like /tmp: closing it would break everyone else's use of it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    secure_ray_token()
    assert (_mode(token), _mode(shared)) == (0o600, 0o1777)


# 2. `run` and `deploy` refuse Ray without token auth, unless told explicitly.


def _busy_port() -> socket.socket:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    return busy


def test_run_refuses_ray_without_token_auth_before_starting_anything(tmp_path: Path) -> None:
    with _busy_port() as busy:  # were the refusal late, `run` would stop at this port instead
        port = str(busy.getsockname()[1])
        result = run_cli(
            "run", str(ECHO), "--port", port, env=_env(RAY_AUTH_MODE="disabled", HOME=str(tmp_path)), timeout=60
        )
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "RAY_AUTH_MODE=disabled" in line and "unpickle" in line and "--insecure-no-ray-auth" in line


def test_deploy_refuses_ray_without_token_auth(tmp_path: Path) -> None:
    result = run_cli(
        "deploy",
        str(ECHO),
        "--address",
        _nothing_listens(),
        env=_env(RAY_AUTH_MODE="disabled", HOME=str(tmp_path)),
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "RAY_AUTH_MODE=disabled" in line and "unpickle" in line and "--insecure-no-ray-auth" in line


def test_insecure_no_ray_auth_lets_the_operator_go_on(tmp_path: Path) -> None:
    env = _env(RAY_AUTH_MODE="disabled", HOME=str(tmp_path))
    with _busy_port() as busy:
        port = str(busy.getsockname()[1])
        ran = run_cli("run", str(ECHO), "--port", port, "--insecure-no-ray-auth", env=env, timeout=60)
    assert ran.returncode == 2 and f"--port {port}: cannot listen there" in ran.stderr, (
        ran.stderr
    )  # past the auth check
    deployed = run_cli(
        "deploy", str(ECHO), "--address", _nothing_listens(), "--insecure-no-ray-auth", env=env, timeout=60
    )
    assert deployed.returncode == 1 and "cannot connect" in deployed.stderr, deployed.stderr


# 3. A Serve config never exposes keyless models beyond loopback.


def test_build_listens_on_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFLEET_API_KEYS", raising=False)
    result = CliRunner().invoke(app, ["build", str(ECHO)])
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(result.stdout)["http_options"]["host"] == "127.0.0.1"


def test_build_refuses_a_non_loopback_host_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFLEET_API_KEYS", raising=False)
    result = CliRunner().invoke(app, ["build", str(ECHO), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert "--host 0.0.0.0" in line and "without API keys" in line and str(ECHO) in line


def test_build_exposes_models_that_need_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_API_KEYS", KEYS)
    result = CliRunner().invoke(app, ["build", str(ECHO), "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["http_options"]["host"] == "0.0.0.0" and config["applications"][0]["args"]["keys"]


def test_a_rayservice_refuses_keyless_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFLEET_API_KEYS", raising=False)
    result = CliRunner().invoke(app, ["cluster", "render", str(KUBERAY), "--app", str(ECHO)])
    assert result.exit_code == 2, result.stdout
    line = _one_line(result.stderr)
    assert "--app" in line and "without API keys" in line and str(ECHO) in line


# 4. Plaintext keys are read, then gone from the environment before Ray starts.


def test_run_forgets_plaintext_keys_before_ray_starts(monkeypatch: pytest.MonkeyPatch, environ_kept) -> None:
    monkeypatch.setenv("MODELFLEET_API_KEYS", KEYS)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with _busy_port() as busy:  # `run` stops here, where Ray would start next
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["run", str(ECHO), "--port", str(port)])
    assert result.exit_code == 2 and "cannot listen there" in result.stderr, result.stderr
    assert "MODELFLEET_API_KEYS" not in os.environ


def test_deploy_forgets_plaintext_keys_before_connecting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environ_kept
) -> None:
    monkeypatch.setenv("MODELFLEET_API_KEYS", KEYS)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    result = CliRunner().invoke(app, ["deploy", str(ECHO), "--address", _nothing_listens()])
    assert result.exit_code == 1 and "cannot connect" in result.stderr, result.stderr
    assert "MODELFLEET_API_KEYS" not in os.environ


def test_rays_processes_never_see_plaintext_keys(fleet: Fleet) -> None:
    """The fleet runs with MODELFLEET_API_KEYS set; none of the Ray processes `run` started inherits it."""
    # The leader is `run` itself: /proc shows the environment it started with, before it dropped the keys.
    pids = [pid for pid in session_pids(fleet.process.pid) if pid != fleet.process.pid]
    environs = {}
    for pid in pids:
        try:
            environs[pid] = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue  # a short-lived helper that has exited
    assert len(environs) >= 3, environs.keys()  # the GCS, a raylet, workers and replicas at least
    leaked = [pid for pid, env in environs.items() if any(entry.startswith(b"MODELFLEET_API_KEYS=") for entry in env)]
    assert not leaked, f"processes {leaked} of the fleet's Ray hold the plaintext keys"


def test_run_leaves_rays_token_file_private(fleet: Fleet) -> None:
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    assert token.exists(), "a local Ray with token auth has a token file"
    assert (_mode(token), _mode(token.parent)) == (0o600, 0o700)
