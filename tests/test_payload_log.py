"""Payload logging: the events KServe's consumers expect, redaction, sampling, batching by count and by time, a full
queue, a destination that refuses, and real objects in a folder and in S3 (moto_server). No Ray."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from monitoring.payload_log import (
    REDACTED,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    PayloadLogSettings,
    PayloadLogWriter,
    payload_events,
    read_payload_log,
)
from providers.storage import get_provider
from tests.storage.conftest import s3_environment, s3_server  # noqa: F401 - the storage suite's moto_server fixture

NOW = 1_767_225_600.25  # 2026-01-01T00:00:00.250Z
INPUTS = {
    "amount": np.array([12.5, 980.0], dtype=np.float64),
    "merchant": np.array([b"acme", b"glob\xffex"], dtype=object),
    "card_number": np.array([b"4111111111111111", b"5500000000000004"], dtype=object),
}
OUTPUTS = {"fraud_probability": np.array([[0.25], [0.75]], dtype=np.float32)}
OBJECT_NAME = re.compile(r"(?P<ms>\d{13})-[0-9a-f]{8}\.jsonl")


def _settings(destination: str | Path, **options) -> PayloadLogSettings:
    return PayloadLogSettings(destination=str(destination), sample_rate=1, format="jsonl", **options)


def _wait_for(check: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout_s}s")
        time.sleep(0.02)


def _objects(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture()
def writers() -> Iterator[list[PayloadLogWriter]]:
    """Writers a test made, closed after it even when it fails."""
    made: list[PayloadLogWriter] = []
    yield made
    for writer in made:
        writer.close(timeout_s=5)


def _writer(made: list[PayloadLogWriter], settings: PayloadLogSettings, **options) -> PayloadLogWriter:
    writer = PayloadLogWriter(settings, "fraud", **options)
    made.append(writer)
    return writer


# ---- the events ------------------------------------------------------------------------------------------------


def test_events_carry_kserve_attributes_and_share_the_request_id():
    request, response = payload_events("fraud", "scorer", 3, "req-1", INPUTS, OUTPUTS, at=NOW)
    for event in (request, response):
        assert event["specversion"] == "1.0"
        assert event["id"] == "req-1"
        assert event["source"] == "/modelfleet/apps/fraud/models/scorer"
        assert event["time"] == "2026-01-01T00:00:00.250Z"
        assert event["datacontenttype"] == "application/json"
        assert (event["namespace"], event["inferenceservicename"], event["modelversion"]) == ("fraud", "scorer", "3")
    assert (request["type"], response["type"]) == (REQUEST_TYPE, RESPONSE_TYPE)
    assert REQUEST_TYPE == "org.kubeflow.serving.inference.request"
    assert RESPONSE_TYPE == "org.kubeflow.serving.inference.response"
    assert request["data"] == {
        "inputs": {
            "amount": [12.5, 980.0],
            "merchant": ["acme", "glob\ufffdex"],  # bytes as UTF-8 text, what is not UTF-8 replaced
            "card_number": ["4111111111111111", "5500000000000004"],
        }
    }
    assert response["data"] == {"outputs": {"fraud_probability": [[0.25], [0.75]]}}
    json.dumps([request, response], allow_nan=False)  # plain JSON, nothing numpy left


def test_mode_and_a_failed_request_choose_the_events():
    def types(outputs, mode):
        return [e["type"] for e in payload_events("a", "m", 1, "r", INPUTS, outputs, mode=mode)]

    assert types(OUTPUTS, "all") == [REQUEST_TYPE, RESPONSE_TYPE]
    assert types(None, "all") == [REQUEST_TYPE]  # no answer, no response event
    assert types(OUTPUTS, "request") == [REQUEST_TYPE]
    assert types(OUTPUTS, "response") == [RESPONSE_TYPE]
    assert types(None, "response") == []


def test_redacted_names_are_replaced_in_inputs_and_outputs():
    outputs = {**OUTPUTS, "card_number": np.array([b"4111111111111111"], dtype=object)}
    request, response = payload_events(
        "fraud", "scorer", 3, "r", INPUTS, outputs, redact=["card_number", "fraud_probability"]
    )
    assert request["data"]["inputs"]["card_number"] == REDACTED
    assert request["data"]["inputs"]["amount"] == [12.5, 980.0]
    assert response["data"]["outputs"] == {"fraud_probability": REDACTED, "card_number": REDACTED}
    assert "4111" not in json.dumps([request, response])


# ---- the writer -------------------------------------------------------------------------------------------------


def test_sampling_follows_the_rate(tmp_path, writers):
    settings = PayloadLogSettings(destination=str(tmp_path), sample_rate=0.25, format="jsonl", batch_records=10_000)
    writer = _writer(writers, settings, rng=random.Random(18))
    taken = sum(writer.offer("scorer", 1, f"r{n}", INPUTS, OUTPUTS) for n in range(4000))
    assert abs(taken - 1000) < 110  # 4 standard deviations (27.4)
    writer.close()
    assert writer.written_records == 2 * taken and writer.dropped == 0


def test_a_full_batch_is_written_at_once(tmp_path, writers):
    ticks = itertools.count()
    writer = _writer(writers, _settings(tmp_path, batch_records=4, flush_s=60), clock=lambda: NOW + next(ticks))
    for n in range(3):
        assert writer.offer("scorer", 1, f"r{n}", INPUTS, OUTPUTS)
    _wait_for(lambda: writer.written_batches == 1)  # 6 events: one full batch of 4 long before flush_s
    [written] = _objects(tmp_path)
    assert written.relative_to(tmp_path).parent.as_posix() == "fraud/scorer/2026/01/01/00"
    assert OBJECT_NAME.fullmatch(written.name)["ms"] == "1767225600250"
    assert [json.loads(line)["id"] for line in written.read_text().splitlines()] == ["r0", "r0", "r1", "r1"]
    writer.close()
    assert (writer.written_batches, writer.written_records) == (2, 6)
    assert [e["id"] for e in read_payload_log(tmp_path)] == ["r0", "r0", "r1", "r1", "r2", "r2"]


def test_a_batch_that_is_not_full_is_written_after_flush_s(tmp_path, writers):
    writer = _writer(writers, _settings(tmp_path, flush_s=0.2))
    writer.offer("scorer", 1, "r0", INPUTS, None)
    writer.offer("digits", 2, "r1", {"image": np.zeros((1, 2), np.uint8)}, {"label": np.array([7])})
    _wait_for(lambda: writer.written_batches == 2, timeout_s=5)  # one object per model
    assert {p.relative_to(tmp_path).parts[:2] for p in _objects(tmp_path)} == {("fraud", "scorer"), ("fraud", "digits")}
    events = {(e["inferenceservicename"], e["type"]): e for e in read_payload_log(f"file://{tmp_path}")}
    assert set(events) == {("scorer", REQUEST_TYPE), ("digits", REQUEST_TYPE), ("digits", RESPONSE_TYPE)}
    assert events[("digits", RESPONSE_TYPE)]["data"] == {"outputs": {"label": [7]}}


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path, writers):
    writer = _writer(writers, _settings(tmp_path, max_queue=3), start=False)  # nothing drains the queue yet
    began = time.monotonic()
    taken = [writer.offer("scorer", 1, f"r{n}", INPUTS, OUTPUTS) for n in range(5)]
    assert time.monotonic() - began < 1
    assert taken == [True, True, True, False, False]
    assert writer.dropped == 4 and writer.dropped_by_model == {"scorer": 4}  # two requests, two events each
    writer.start()
    writer.close()
    assert (writer.written_records, writer.dropped) == (6, 4)
    writer.offer("scorer", 1, "late", INPUTS, None)  # after close: dropped, counted
    assert writer.dropped == 5


def test_a_destination_that_refuses_counts_the_batch_and_never_raises(tmp_path, writers):
    (tmp_path / "a-file").write_text("not a folder")
    writer = _writer(writers, _settings(tmp_path / "a-file" / "logs", batch_records=2), attempts=2, backoff_s=0.01)
    assert writer.offer("scorer", 1, "r0", INPUTS, OUTPUTS)
    _wait_for(lambda: writer.failed_batches == 1)
    assert writer.offer("scorer", 1, "r1", INPUTS, None)  # the writer carries on
    writer.close()
    assert (writer.failed_batches, writer.written_batches, writer.dropped) == (2, 0, 3)
    assert writer.dropped_by_model == {"scorer": 3}


def test_close_writes_what_is_queued_to_a_file_uri(tmp_path, writers):
    settings = _settings(f"file://{tmp_path}/logs/", redact=["card_number"], mode="request", flush_s=3600)
    writer = _writer(writers, settings)
    for n in range(5):
        writer.offer("scorer", 1, f"r{n}", INPUTS, OUTPUTS)
    writer.close()
    [written] = _objects(tmp_path / "logs")
    assert OBJECT_NAME.fullmatch(written.name)
    events = read_payload_log(tmp_path / "logs")
    assert [e["id"] for e in events] == [f"r{n}" for n in range(5)]
    assert {e["type"] for e in events} == {REQUEST_TYPE}
    assert all(e["data"]["inputs"]["card_number"] == REDACTED for e in events)


def test_lines_are_standard_json_even_with_nan_and_infinity(tmp_path, writers):
    writer = _writer(writers, _settings(tmp_path))
    writer.offer("scorer", 1, "r0", INPUTS, {"score": np.array([np.nan, np.inf, -np.inf, 0.5])})
    writer.close()
    [written] = _objects(tmp_path)

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    response = [json.loads(line, parse_constant=refuse) for line in written.read_text().splitlines()][1]
    assert response["data"]["outputs"]["score"] == ["NaN", "Infinity", "-Infinity", 0.5]


def test_a_relative_destination_is_relative_to_base_dir(tmp_path, writers):
    writer = _writer(writers, _settings("logs"), base_dir=tmp_path)
    writer.offer("scorer", 1, "r0", INPUTS, None)
    writer.close()
    assert [e["id"] for e in read_payload_log(tmp_path / "logs")] == ["r0"]


@pytest.fixture()
def s3(s3_server, monkeypatch):  # noqa: F811 - the fixture imported above
    import boto3

    for name, value in s3_environment(s3_server).items():
        monkeypatch.setenv(name, value)
    get_provider.cache_clear()  # the S3 client reads its endpoint once: make it this server's
    client = boto3.client("s3")
    client.create_bucket(Bucket="payload-logs")
    yield client
    get_provider.cache_clear()  # and let the next user make one from its own environment


def test_objects_reach_s3(s3, writers):
    writer = _writer(writers, _settings("s3://payload-logs/prod", redact=["card_number"]), clock=lambda: NOW)
    for n in range(3):
        writer.offer("scorer", 1, f"r{n}", INPUTS, OUTPUTS)
    writer.close()
    assert (writer.written_batches, writer.written_records, writer.failed_batches) == (1, 6, 0)
    [key] = [o["Key"] for o in s3.list_objects_v2(Bucket="payload-logs")["Contents"]]
    prefix, name = key.rsplit("/", 1)
    assert prefix == "prod/fraud/scorer/2026/01/01/00" and OBJECT_NAME.fullmatch(name)
    body = s3.get_object(Bucket="payload-logs", Key=key)["Body"].read().decode()
    events = [json.loads(line) for line in body.splitlines()]
    assert [(e["id"], e["type"]) for e in events[:2]] == [("r0", REQUEST_TYPE), ("r0", RESPONSE_TYPE)]
    assert "4111" not in body


@pytest.mark.skipif(
    importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed: JSON lines are written instead"
)
def test_parquet_has_one_row_per_event(tmp_path, writers):
    writer = _writer(writers, PayloadLogSettings(destination=str(tmp_path), sample_rate=1, format="auto"))
    writer.offer("scorer", 1, "r0", INPUTS, OUTPUTS)
    writer.close()
    [written] = _objects(tmp_path)
    assert written.suffix == ".parquet"
    events = read_payload_log(tmp_path)
    assert [e["type"] for e in events] == [REQUEST_TYPE, RESPONSE_TYPE]
    assert events[1]["data"] == {"outputs": {"fraud_probability": [[0.25], [0.75]]}}


# ---- the spec section -------------------------------------------------------------------------------------------


def test_settings_defaults_and_refusals(tmp_path):
    settings = PayloadLogSettings(destination="s3://bucket/logs")
    assert (settings.sample_rate, settings.mode, settings.batch_records, settings.format) == (0.05, "all", 1000, "auto")
    with pytest.raises(ValidationError, match=r"https:// is read-only; write payload logs to az://, file://, gs://"):
        PayloadLogSettings(destination="https://example.com/logs")
    with pytest.raises(ValidationError, match=r"ftp:// is not a storage scheme"):
        PayloadLogSettings(destination="ftp://example.com/logs")
    with pytest.raises(ValidationError, match=r"s3:// URIs need a bucket"):
        PayloadLogSettings(destination="s3:///logs")
    with pytest.raises(ValidationError, match=r"extra_forbidden|Extra inputs"):
        PayloadLogSettings(destination="logs", sample_rte=0.1)
    for bad in ({"sample_rate": 0}, {"sample_rate": 1.5}, {"batch_records": 0}, {"flush_s": 0}, {"max_queue": 0}):
        with pytest.raises(ValidationError):
            PayloadLogSettings(destination="logs", **bad)
    PayloadLogSettings.model_json_schema()  # every field described, for editors
    assert all(f.description for f in PayloadLogSettings.model_fields.values())
