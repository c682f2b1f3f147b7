"""API keys: 401 without a valid key, 403 without the scope, probes open, keys never logged or stored."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelfleet.cli import app
from monitoring.audit import audit_folder, query, verify
from serve_apps.auth import KeyRing, KeysConfigError, hash_key, new_key
from tests.helpers import ADMIN_KEY, DIGITS_KEY, ROOT, Fleet, free_port, run_cli, wait_until

ECHO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
DIGITS = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {ADMIN_KEY}x"},
    ],
)
def test_no_valid_key_is_401(fleet: Fleet, headers: dict) -> None:
    with fleet.client(key=None) as client:
        for method, path, body in (
            ("POST", "/v2/models/echo/infer", ECHO),
            ("POST", "/v1/models/echo:predict", {"instances": [[1.0]]}),
            ("GET", "/v2/models/echo", None),
            ("GET", "/v2", None),
            ("GET", "/v1/models", None),
            ("GET", "/v2/models", None),
            ("POST", "/v2/repository/index", None),
            ("GET", "/metrics", None),
        ):
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == "Bearer" and "API key" in response.json()["error"]


def test_scoped_key_reaches_its_model_only(fleet: Fleet) -> None:
    with fleet.client(key=DIGITS_KEY) as client:
        assert client.post("/v2/models/digits/infer", json=DIGITS).status_code == 200
        assert client.get("/v2/models/digits").status_code == 200
        for path, body in (("/v2/models/echo/infer", ECHO), ("/v2/models/nope/infer", ECHO)):
            denied = client.post(path, json=body)  # no scope: 403, whether or not the model exists
            assert denied.status_code == 403 and "invoke:" in denied.json()["error"]
        assert client.get("/metrics").status_code == 403  # admin only
        assert client.get("/v2").status_code == 200  # any valid key may list the server
        # Listings, like metadata, show a key the models it may invoke and nothing of the others.
        assert client.get("/v2").json()["models"] == ["digits"]
        assert client.get("/v1/models").json() == {"models": ["digits"]}
        assert client.get("/v2/models").json() == {"models": ["digits"]}
        assert [e["name"] for e in client.post("/v2/repository/index").json()] == ["digits"]


def test_admin_reaches_everything(fleet: Fleet) -> None:
    with fleet.client(key=ADMIN_KEY) as client:
        assert client.post("/v2/models/echo/infer", json=ECHO).status_code == 200
        assert client.get("/metrics").status_code == 200


def test_probes_and_docs_stay_open(fleet: Fleet) -> None:
    with fleet.client(key=None) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_keys_never_reach_the_logs(fleet: Fleet) -> None:
    with fleet.client(key=DIGITS_KEY) as client:
        client.post("/v2/models/echo/infer", json=ECHO)  # a denied call, the likeliest to be logged
    log = fleet.log()
    assert log and ADMIN_KEY not in log and DIGITS_KEY not in log


def test_each_denied_request_is_an_audit_line_that_never_holds_the_key(fleet: Fleet, modelfleet_home: Path) -> None:
    """The fleet's ingress writes to the audit log of its node (here the session's MODELFLEET_HOME), as the CLI does."""
    forged = "mf_forged_" + new_key()[3:]
    ids = {"401": "audit-401-" + new_key()[3:19], "403": "audit-403-" + new_key()[3:19]}
    with fleet.client(key=None) as client:
        headers = {"Authorization": f"Bearer {forged}", "x-request-id": ids["401"]}
        assert client.post("/v2/models/echo/infer", json=ECHO, headers=headers).status_code == 401
    with fleet.client(key=DIGITS_KEY) as client:
        assert client.post("/v2/models/echo/infer", json=ECHO, headers={"x-request-id": ids["403"]}).status_code == 403
    folder = modelfleet_home / "audit"

    def lines() -> dict[str, dict]:
        found = query(folder, action="request.denied") if folder.exists() else []
        return {r["request_id"]: r for r in found if r["request_id"] in ids.values()}

    wait_until(lambda: len(lines()) == 2, 30, "the ingress's audit lines", None, fleet.log_path)
    invalid, unscoped = lines()[ids["401"]], lines()[ids["403"]]
    assert (invalid["actor"], invalid["outcome"], invalid["source"]) == ("key:?", "denied", "127.0.0.1")
    assert unscoped["actor"] == "key:MODELFLEET_API_KEYS[2]" and unscoped["details"]["model"] == "echo"
    assert query(folder, model="echo", since=None) and verify(folder).ok
    written = "".join(p.read_text() for p in folder.glob("audit*.jsonl"))
    assert forged not in written and DIGITS_KEY not in written


def test_keys_file_and_environment_merge(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    k1, k2, k3, k4 = (new_key() for _ in range(4))
    path.write_text(yaml.safe_dump({"keys": [{"name": "bot", "sha256": hash_key(k1), "scopes": ["invoke:digits"]}]}))
    ring = KeyRing.load(path, env={"MODELFLEET_API_KEYS": f"{k2}=admin; {k3}=invoke:echo,invoke:digits"})
    assert ring.find(k1).allows("digits") and not ring.find(k1).allows("echo")
    assert ring.find(k2).allows(None) and ring.find(k3).allows("echo")
    assert ring.find(k4) is None and ring.find("") is None
    assert all(k.sha256 != k2 for k in ring.keys)  # only hashes are held


@pytest.mark.parametrize(
    "raw,message",
    [
        ("secret-one", "must look like"),
        ("secret-two=", "must look like"),
        ("secret-three-0123456789-abcdefghijklm=root", "unknown scope"),
        ("secret=admin", "too weak"),  # unsalted sha256 of a guessable key is as good as the key
        ("secret" * 8 + "=admin", "too weak"),  # long but not random
    ],
)
def test_bad_environment_keys_are_explained_without_echoing_the_key(raw: str, message: str) -> None:
    with pytest.raises(KeysConfigError, match=message) as info:
        KeyRing.load(None, env={"MODELFLEET_API_KEYS": raw})
    assert "secret" not in str(info.value)


def test_keys_create_prints_the_key_once_and_stores_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    result = CliRunner().invoke(
        app, ["keys", "create", "--file", str(path), "--name", "ci", "--scope", "invoke:digits"]
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("mf_") and key not in path.read_text()
    assert KeyRing.load(path, env={}).find(key).scopes == ("invoke:digits",)
    created = query(audit_folder(), action="key.created")[-1]
    assert created["details"] == {"name": "ci", "scopes": ["invoke:digits"]} and key not in json.dumps(created)
    again = CliRunner().invoke(app, ["keys", "create", "--file", str(path), "--name", "ci", "--scope", "admin"])
    assert again.exit_code == 2 and "exists" in again.stderr


def test_a_spec_with_a_broken_keys_file_exits_2(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "examples/echo/app.yaml").read_text())
    spec["ingress"] = {"keys_file": "keys.yaml"}
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "keys.yaml").write_text(
        yaml.safe_dump({"keys": [{"name": "x", "sha256": "nothex", "scopes": ["admin"]}]})
    )
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "app.yaml")])
    assert result.exit_code == 2 and "keys[0].sha256" in result.stderr


def test_run_refuses_to_expose_models_without_keys(monkeypatch, environ_kept) -> None:
    monkeypatch.delenv("MODELFLEET_API_KEYS", raising=False)
    result = CliRunner().invoke(
        app, ["run", str(ROOT / "examples/echo/app.yaml"), "--host", "0.0.0.0", "--port", str(free_port())]
    )
    assert result.exit_code == 2 and "without API keys" in result.stderr


def _keys_file(tmp_path: Path, *names: str) -> Path:
    path = tmp_path / "keys.yaml"
    for name in names:
        created = run_cli("keys", "create", "--file", str(path), "--name", name, "--scope", "invoke:digits")
        assert created.returncode == 0, created.stderr
    return path


def test_keys_list_shows_names_and_scopes_never_a_hash(tmp_path: Path) -> None:
    path = _keys_file(tmp_path, "ci", "dashboard")
    hashes = [k.sha256 for k in KeyRing.load(path, env={}).keys]
    listed = run_cli("keys", "list", str(path))
    assert listed.returncode == 0, listed.stderr
    assert "ci" in listed.stdout and "dashboard" in listed.stdout and "invoke:digits" in listed.stdout
    as_json = run_cli("keys", "list", str(path), "--json")
    assert json.loads(as_json.stdout) == [
        {"name": "ci", "scopes": ["invoke:digits"]},
        {"name": "dashboard", "scopes": ["invoke:digits"]},
    ]
    for result in (listed, as_json):
        assert not any(h in result.stdout + result.stderr for h in hashes)
        assert not any(h[:12] in result.stdout + result.stderr for h in hashes)


def test_keys_revoke_removes_one_key_atomically_and_keeps_the_file_private(tmp_path: Path) -> None:
    path = _keys_file(tmp_path, "ci", "dashboard")
    revoked = run_cli("keys", "revoke", str(path), "ci")
    assert revoked.returncode == 0, revoked.stderr
    assert len(revoked.stdout.strip().splitlines()) == 1 and "'ci'" in revoked.stdout
    assert "redeploy" in revoked.stdout  # running apps hold the hashes they were deployed with
    assert [k.name for k in KeyRing.load(path, env={}).keys] == ["dashboard"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.yaml"]  # no temporary file left behind


@pytest.mark.parametrize("missing", ["name", "file"])
def test_keys_revoke_of_an_unknown_name_or_file_exits_2_in_one_line(tmp_path: Path, missing: str) -> None:
    path = _keys_file(tmp_path, "ci") if missing == "name" else tmp_path / "absent.yaml"
    before = path.read_bytes() if path.exists() else None
    result = run_cli("keys", "revoke", str(path), "nobody")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
    assert ("'nobody'" if missing == "name" else "absent.yaml") in result.stderr
    assert (path.read_bytes() if path.exists() else None) == before
