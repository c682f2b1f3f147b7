"""The webhook notifier against a real HTTP receiver on 127.0.0.1: signatures, retries, dead letters, close().

No Ray. The receiver answers a script of statuses (then 200s) and can hang until released; close() is what waits
for delivery, so no test sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from groundwork.specs import SpecError
from monitoring.notifier import NOT_DELIVERED_BEFORE_EXIT, CloudEvent, Notifier, load_config, notifier_from_env

SECRET_ENV = "TEST_NOTIFIER_SECRET"
SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    requests: list[Request] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # answers to give, in order; then 200
    hang: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def answer(self, *statuses: int, **headers: str) -> None:
        self.script.extend((status, {k.replace("_", "-"): v for k, v in headers.items()}) for status in statuses)

    def wait_for(self, count: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    rx = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with rx.arrived:
                rx.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status, headers = rx.script.pop(0) if rx.script else (200, {})
                rx.arrived.notify_all()
            if rx.hang:
                rx.release.wait(30)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield rx
    rx.release.set()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELFLEET_HOME", str(tmp_path))
    monkeypatch.delenv("MODELFLEET_WEBHOOKS", raising=False)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return tmp_path


def configure(home: Path, *hooks: dict[str, Any], **settings: Any) -> Notifier:
    """Writes $MODELFLEET_HOME/webhooks.yaml (fast retries unless told) and loads it as a caller would."""
    webhooks = [{"secret_env": SECRET_ENV, **hook} for hook in hooks]
    config = {"webhooks": webhooks, "max_attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05, **settings}
    (home / "webhooks.yaml").write_text(yaml.safe_dump(config))
    return notifier_from_env()


def dead_letters(home: Path) -> list[dict[str, Any]]:
    path = home / "webhooks.dead-letter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_delivered_event_is_a_signed_cloudevent(home: Path, receiver: Receiver) -> None:
    with configure(home, {"url": receiver.url}) as notifier:
        event = notifier.send(
            "/modelfleet/registry", "model_version.created", {"model": "digits", "version": 3}, "digits/3"
        )
    [request] = receiver.requests
    assert request.headers["content-type"] == "application/cloudevents+json"
    assert request.headers["webhook-id"] == event.id
    payload = Webhook(SECRET).verify(request.body, request.headers)
    received = CloudEvent.model_validate(payload)
    assert received == event
    assert (payload["specversion"], payload["datacontenttype"]) == ("1.0", "application/json")
    assert (payload["source"], payload["type"], payload["subject"]) == (
        "/modelfleet/registry",
        "model_version.created",
        "digits/3",
    )
    assert payload["data"] == {"model": "digits", "version": 3}
    assert payload["time"].endswith("Z") and datetime.fromisoformat(payload["time"]).utcoffset().total_seconds() == 0
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.body.replace(b"digits", b"digitz"), request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(os.urandom(24)).decode()).verify(request.body, request.headers)
    assert dead_letters(home) == []


def test_an_event_without_subject_leaves_it_out(home: Path, receiver: Receiver) -> None:
    with configure(home, {"url": receiver.url}) as notifier:
        notifier.send("/modelfleet/rollout", "rollout.step", {"weight": 10})
    assert "subject" not in json.loads(receiver.requests[0].body)


def test_5xx_is_retried_with_the_same_webhook_id_and_delivered_once(home: Path, receiver: Receiver) -> None:
    receiver.answer(500, 500)
    with configure(home, {"url": receiver.url}) as notifier:
        event = notifier.send("/modelfleet/registry", "model_version.created", {"version": 1})
    assert [r.headers["webhook-id"] for r in receiver.requests] == [event.id] * 3
    for request in receiver.requests:
        Webhook(SECRET).verify(request.body, request.headers)
    assert dead_letters(home) == []


def test_retry_after_is_honoured_but_capped(home: Path, receiver: Receiver) -> None:
    receiver.answer(429, retry_after="3600")  # uncapped, close() would give up and dead-letter it
    with configure(home, {"url": receiver.url}) as notifier:
        notifier.send("/modelfleet/registry", "model_version.created", {})
    assert len(receiver.requests) == 2
    assert dead_letters(home) == []


def test_a_4xx_is_not_retried_and_is_dead_lettered(home: Path, receiver: Receiver) -> None:
    receiver.answer(400)
    with configure(home, {"url": receiver.url}) as notifier:
        event = notifier.send("/modelfleet/registry", "model_version.created", {"version": 1})
    assert len(receiver.requests) == 1
    [letter] = dead_letters(home)
    assert (letter["webhook"], letter["event"]["id"], letter["attempts"]) == (receiver.url, event.id, 1)
    assert "400" in letter["error"] and letter["event"]["data"] == {"version": 1}
    assert stat.S_IMODE((home / "webhooks.dead-letter.jsonl").stat().st_mode) == 0o600


def test_a_receiver_that_always_fails_gets_max_attempts_then_a_dead_letter(home: Path, receiver: Receiver) -> None:
    receiver.answer(*[503] * 10)
    with configure(home, {"url": receiver.url}, max_attempts=4) as notifier:
        event = notifier.send("/modelfleet/rollout", "rollout.step", {"step": 2})
    assert len(receiver.requests) == 4
    [letter] = dead_letters(home)
    assert (letter["event"]["id"], letter["attempts"], letter["error"]) == (event.id, 4, "HTTP 503")


def test_nothing_listening_is_retried_then_dead_lettered(home: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with configure(home, {"url": f"http://127.0.0.1:{port}/hook"}) as notifier:
        event = notifier.send("/modelfleet/registry", "model_version.created", {})
    [letter] = dead_letters(home)
    assert (letter["event"]["id"], letter["attempts"]) == (event.id, 3)
    assert "ConnectError" in letter["error"]


def test_events_patterns_route_by_type(home: Path, receiver: Receiver) -> None:
    hooks = [
        {"url": receiver.url + "/models", "events": ["model_version.*", "model_version_alias.*"]},
        {"url": receiver.url + "/rollouts", "events": ["rollout.*"]},
        {"url": receiver.url + "/all"},
    ]
    with configure(home, *hooks) as notifier:
        for kind in ("model_version.created", "model_version_alias.deleted", "rollout.step", "deployment.recorded"):
            notifier.send("/modelfleet/test", kind, {})
    seen: dict[str, list[str]] = {}
    for request in receiver.requests:
        seen.setdefault(request.path, []).append(json.loads(request.body)["type"])
    assert sorted(seen["/hook/models"]) == ["model_version.created", "model_version_alias.deleted"]
    assert seen["/hook/rollouts"] == ["rollout.step"]
    assert len(seen["/hook/all"]) == 4


def test_close_gives_up_on_a_hanging_receiver_and_dead_letters_what_is_left(home: Path, receiver: Receiver) -> None:
    receiver.hang = True
    notifier = configure(home, {"url": receiver.url, "timeout_s": 30})
    in_flight = notifier.send("/modelfleet/registry", "model_version.created", {"n": 1})
    receiver.wait_for(1)
    queued = notifier.send("/modelfleet/registry", "model_version.created", {"n": 2})
    notifier.close(timeout_s=0.2)
    late = notifier.send("/modelfleet/registry", "model_version.created", {"n": 3})
    errors = {letter["event"]["id"]: letter["error"] for letter in dead_letters(home)}
    assert errors == {
        in_flight.id: NOT_DELIVERED_BEFORE_EXIT,
        queued.id: NOT_DELIVERED_BEFORE_EXIT,
        late.id: "sent after the notifier was closed",
    }
    receiver.release.set()


def test_a_full_queue_dead_letters_instead_of_blocking(home: Path, receiver: Receiver) -> None:
    receiver.hang = True
    (home / "webhooks.yaml").write_text(yaml.safe_dump({"webhooks": [{"url": receiver.url, "secret_env": SECRET_ENV}]}))
    notifier = Notifier(load_config(home / "webhooks.yaml"), queue_size=1)
    first = notifier.send("/s", "a.b", {})
    receiver.wait_for(1)  # the worker holds the first; the queue has room for one more
    second, third = notifier.send("/s", "a.b", {}), notifier.send("/s", "a.b", {})
    assert [letter["event"]["id"] for letter in dead_letters(home)] == [third.id]
    assert dead_letters(home)[0]["error"].startswith("queue full")
    notifier.close(timeout_s=0.2)
    assert [letter["event"]["id"] for letter in dead_letters(home)] == [third.id, first.id, second.id]
    receiver.release.set()


def test_without_a_config_file_send_does_nothing(home: Path) -> None:
    threads = set(threading.enumerate())
    notifier = notifier_from_env()
    event = notifier.send("/modelfleet/registry", "model_version.created", {"version": 1})
    notifier.close()
    assert not notifier.enabled and event.type == "model_version.created"
    assert set(threading.enumerate()) - threads == set()  # no worker started
    assert list(home.iterdir()) == []


def test_modelfleet_webhooks_names_the_file(home: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = home / "conf" / "hooks.yaml"
    elsewhere.parent.mkdir()
    config = {"webhooks": [{"url": receiver.url, "secret_env": SECRET_ENV}], "dead_letter": "undelivered.jsonl"}
    elsewhere.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MODELFLEET_WEBHOOKS", str(elsewhere))
    with notifier_from_env() as notifier:
        assert notifier.dead_letter == elsewhere.parent / "undelivered.jsonl"
        notifier.send("/s", "a.b", {})
    assert len(receiver.requests) == 1
    monkeypatch.setenv("MODELFLEET_WEBHOOKS", str(home / "missing.yaml"))
    with pytest.raises(SpecError, match="missing.yaml: file not found"):
        notifier_from_env()


@pytest.mark.parametrize(
    ("hook", "settings", "message"),
    [
        ({"secret": SECRET}, {}, r"webhooks\[0\]\.secret: unknown key; did you mean 'secret_env'\?"),
        ({}, {"max_attempt": 3}, r"max_attempt: unknown key; did you mean 'max_attempts'\?"),
        (
            {"secret_env": "NOT_SET_ANYWHERE"},
            {},
            r"webhooks\[0\]\.secret_env: .*NOT_SET_ANYWHERE.*https://h\.example/x",
        ),
        ({"url": "ftp://h.example/x"}, {}, r"webhooks\[0\]\.url: .*http.*'ftp://h\.example/x'"),
        ({"events": []}, {}, r"webhooks\[0\]\.events: the list is empty"),
        ({}, {"backoff_s": 60}, r"backoff_s 60 exceeds max_backoff_s 30"),
    ],
)
def test_config_errors_name_the_field(home: Path, hook: dict[str, Any], settings: dict[str, Any], message: str) -> None:
    webhook = {"url": "https://h.example/x", "secret_env": SECRET_ENV, **hook}
    if "secret" in hook:
        del webhook["secret_env"]
    (home / "webhooks.yaml").write_text(yaml.safe_dump({"webhooks": [webhook], **settings}))
    with pytest.raises(SpecError, match=message) as raised:
        notifier_from_env()
    assert "\n" not in str(raised.value) and str(home / "webhooks.yaml") in str(raised.value)


def test_a_secret_that_is_not_base64_is_a_config_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "whsec_not base64!")
    (home / "webhooks.yaml").write_text(yaml.safe_dump({"webhooks": [{"url": "http://h/", "secret_env": SECRET_ENV}]}))
    with pytest.raises(SpecError, match=r"secret_env: .*not a valid whsec_<base64> secret"):
        notifier_from_env()


# ---- the registry's commands, as their events reach a webhook ----------------------------------------------------


def test_registry_commands_send_their_events_before_they_exit(
    home: Path, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from modelfleet.cli import app

    monkeypatch.delenv("MODELFLEET_REGISTRY_URL", raising=False)
    monkeypatch.delenv("MODELFLEET_ARTIFACT_ROOT", raising=False)
    configure(home, {"url": receiver.url, "events": ["model_version*"]}).close()
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    for args in (
        ["models", "register", "digits", str(weights), "--format", "safetensors"],
        ["models", "alias", "digits@champion", "1"],
        ["models", "alias", "digits@champion", "--remove"],
    ):
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 0, done.output
    # Each command waited for its webhook before exiting: the events are there, in order, signed.
    events = [json.loads(r.body) for r in receiver.requests]
    assert [(e["type"], e["subject"], e["source"]) for e in events] == [
        ("model_version.created", "digits/1", "/modelfleet/registry"),
        ("model_version_alias.created", "digits@champion", "/modelfleet/registry"),
        ("model_version_alias.deleted", "digits@champion", "/modelfleet/registry"),
    ]
    assert events[0]["data"]["sha256"] and events[1]["data"] == {
        "name": "digits",
        "alias": "champion",
        "version": 1,
        "previous_version": None,
    }
    for request in receiver.requests:
        Webhook(SECRET).verify(request.body, request.headers)


def test_a_broken_webhooks_file_stops_a_registry_command_before_it_changes_anything(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from modelfleet.cli import app
    from registry import Registry

    monkeypatch.delenv("MODELFLEET_REGISTRY_URL", raising=False)
    (home / "webhooks.yaml").write_text(
        yaml.safe_dump({"webhooks": [{"url": "ftp://hooks", "secret_env": SECRET_ENV}]})
    )
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    done = CliRunner().invoke(app, ["models", "register", "digits", str(weights), "--format", "safetensors"])
    assert done.exit_code == 2, done.output
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert "webhooks.yaml" in line and "webhooks[0].url" in line and "http://" in line, line
    registry = Registry()
    try:
        assert registry.models() == [], "nothing was registered"
    finally:
        registry.close()
