"""Payload logging (issue 18): a sample of each model's requests and responses, written in batches to any storage.

Each sampled request becomes a CloudEvent with KServe's payload-logger attributes (type
`org.kubeflow.serving.inference.request`, its response `...response` with the same `id`), so consumers built for
KServe's logger read ours. The request path only samples and appends a tuple to a bounded queue; a daemon thread
builds the events and writes one object per model per batch (`batch_records` events, or what came in `flush_s`) as
JSON lines, or Parquet when pyarrow is there, through `providers.storage.upload`. A full queue drops the request and
counts it; an upload that keeps failing drops its batch and counts it: neither ever waits or raises in the caller.
See docs/payload-logging.md.
"""

from __future__ import annotations

import atexit
import collections
import importlib.util
import json
import logging
import math
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import tenacity

from monitoring.payload_log_spec import PayloadLogSettings
from providers.storage import AccessDenied, MissingExtra, UnsupportedScheme, parse_uri, resolve_uri, upload

__all__ = [
    "ENVELOPE",
    "REDACTED",
    "REQUEST_TYPE",
    "RESPONSE_TYPE",
    "PayloadLogSettings",
    "PayloadLogWriter",
    "payload_events",
    "read_payload_log",
]

log = logging.getLogger("modelfleet.payload_log")
# The event types and extension attribute names are KServe's (pkg/logger/worker.go), so its consumers read ours.
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
SOURCE = "/modelfleet/apps/{app}/models/{model}"
REDACTED = "[redacted]"
# Every event's attributes, in order; a Parquet object has one column for each, and `data` as JSON text.
ENVELOPE = (
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "datacontenttype",
    "namespace",
    "inferenceservicename",
    "modelversion",
)
Mode = Literal["all", "request", "response"]
# Errors another attempt will not mend.
_PERMANENT = (AccessDenied, MissingExtra, UnsupportedScheme, PermissionError)


def _decoded(value: Any) -> Any:
    """`value` with bytes as text and numpy values as Python's, ready for JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_decoded(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        listed = value.tolist()  # numbers leave numpy at C speed; only bytes and objects need a walk
        return _decoded(listed) if value.dtype.kind in "OSV" else listed
    return _decoded(value)


def _tensors(named: Mapping[str, Any], redact: frozenset[str]) -> dict[str, Any]:
    return {name: REDACTED if name in redact else _plain(value) for name, value in named.items()}


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload_events(
    app: str,
    model: str,
    version: str | int,
    request_id: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any] | None,
    redact: Iterable[str] = (),
    mode: Mode = "all",
    source: str | None = None,
    *,
    at: float | None = None,
) -> list[dict[str, Any]]:
    """The CloudEvents (structured JSON, as dicts) of one request and its response, as `mode` asks; no response
    event when `outputs` is None (the request failed). Both carry the request's id, as KServe's do. `at`: when the
    request came, in Unix seconds (default now)."""
    envelope = {
        "specversion": "1.0",
        "id": request_id,
        "type": REQUEST_TYPE,
        "source": source or SOURCE.format(app=app, model=model),
        "time": _rfc3339(time.time() if at is None else at),
        "datacontenttype": "application/json",
        "namespace": app,
        "inferenceservicename": model,
        "modelversion": str(version),
    }
    hidden = frozenset(redact)
    events = []
    if mode != "response":
        events.append({**envelope, "data": {"inputs": _tensors(inputs, hidden)}})
    if mode != "request" and outputs is not None:
        events.append({**envelope, "type": RESPONSE_TYPE, "data": {"outputs": _tensors(outputs, hidden)}})
    return events


def _event_count(mode: Mode, outputs: Mapping[str, Any] | None) -> int:
    return (mode != "response") + (mode != "request" and outputs is not None)


def _finite(value: Any) -> Any:
    """NaN and infinities as the strings protobuf's JSON mapping uses, so every line is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:  # a NaN or an infinity somewhere: rare, so only then is everything walked
        return json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False, default=str)


def _pyarrow_installed() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _write_jsonl(path: Path, events: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for event in events:
            f.write(_json(event) + "\n")


def _write_parquet(path: Path, events: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**{key: event.get(key) for key in ENVELOPE}, "data": _json(event["data"])} for event in events]
    pq.write_table(pa.Table.from_pylist(rows), path)


class _Offer(NamedTuple):
    model: str
    version: str | int
    request_id: str | None
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any] | None
    at: float
    events: int


class PayloadLogWriter:
    """Writes one app's sampled payloads from a daemon thread; `offer` never blocks, `close()` flushes.

    Counters, in events (one request or one response): `written_records`, `dropped` (and `dropped_by_model`: queue
    full, offered after close, or lost with a batch that could not be written); `written_batches`, `failed_batches`
    in objects. The inputs and outputs offered are read later, on the writer's thread: do not change them after.
    """

    def __init__(
        self,
        settings: PayloadLogSettings,
        app: str,
        clock: Callable[[], float] = time.time,
        *,
        rng: random.Random | None = None,
        base_dir: Path | str | None = None,
        start: bool = True,
        attempts: int = 3,
        backoff_s: float = 0.5,
    ):
        """`base_dir`: what a relative destination is relative to (the spec's folder); `attempts` per object, with
        exponential backoff from `backoff_s`. Raises ValueError for `format: parquet` without pyarrow."""
        if settings.format == "parquet" and not _pyarrow_installed():
            raise ValueError("logging.format is parquet but pyarrow is not installed; pip install pyarrow, or use auto")
        self.settings = settings
        self.app = app
        self.destination = resolve_uri(settings.destination, base_dir).rstrip("/")
        auto = "parquet" if _pyarrow_installed() else "jsonl"
        self.format = auto if settings.format == "auto" else settings.format
        self.written_records = 0
        self.written_batches = 0
        self.failed_batches = 0
        self.dropped = 0
        self.dropped_by_model: collections.Counter[str] = collections.Counter()
        self._clock = clock
        self._rng = rng or random.Random()
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._redact = frozenset(settings.redact)
        self._pending: collections.deque[_Offer] = collections.deque()
        self._pending_events = 0
        self._dropping = False
        self._batches: dict[str, list[tuple[float, dict[str, Any]]]] = {}  # the worker's alone
        self._cond = threading.Condition()
        self._closed = False
        self._abandon = threading.Event()  # close() gave up waiting: stop retrying
        self._worker = threading.Thread(target=self._run, name=f"modelfleet-payload-log-{app}", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._worker.start()
        atexit.register(self.close)

    def offer(
        self,
        model: str,
        version: str | int,
        request_id: str | None,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any] | None,
    ) -> bool:
        """Log this request (and its response; None if it failed) if it is sampled; True if it was queued."""
        if self._rng.random() >= self.settings.sample_rate:
            return False
        events = _event_count(self.settings.mode, outputs)
        if not events:
            return False
        with self._cond:
            if self._closed or len(self._pending) >= self.settings.max_queue:
                self._drop(model, events)
                if not self._dropping:
                    self._dropping = True
                    log.warning(
                        "payload log of %s: %s; dropping sampled requests until it drains",
                        self.app,
                        "closed" if self._closed else f"queue full ({self.settings.max_queue} waiting)",
                    )
                return False
            self._dropping = False
            self._pending.append(_Offer(model, version, request_id, inputs, outputs, self._clock(), events))
            self._pending_events += events
            if self._pending_events >= self.settings.batch_records:
                self._cond.notify()
        return True

    def close(self, timeout_s: float = 10) -> None:
        """Take no more; write what is queued, waiting up to `timeout_s` for it."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        atexit.unregister(self.close)
        if self._worker.ident is None:  # never started: nothing will write what is queued
            with self._cond:
                for item in self._pending:
                    self._drop(item.model, item.events)
                self._pending.clear()
            return
        self._worker.join(timeout_s)
        if self._worker.is_alive():
            self._abandon.set()
            log.error("payload log of %s: not all events written within %gs of close", self.app, timeout_s)

    def _drop(self, model: str, events: int) -> None:
        """Count lost events; the caller holds the lock."""
        self.dropped += events
        self.dropped_by_model[model] += events

    # ---- the worker thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        scratch = Path(tempfile.mkdtemp(prefix="modelfleet-payload-log-"))  # 0700: payloads are private
        try:
            deadline = time.monotonic() + self.settings.flush_s
            while True:
                with self._cond:
                    while (
                        not self._closed
                        and self._pending_events < self.settings.batch_records
                        and (left := deadline - time.monotonic()) > 0
                    ):
                        self._cond.wait(left)
                    items = list(self._pending)
                    self._pending.clear()
                    self._pending_events = 0
                    closing = self._closed
                self._collect(items)
                if closing or time.monotonic() >= deadline:
                    self._write_batches(scratch, everything=True)
                    deadline = time.monotonic() + self.settings.flush_s
                else:
                    self._write_batches(scratch, everything=False)
                if closing:
                    return
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _collect(self, items: list[_Offer]) -> None:
        for item in items:
            try:
                events = payload_events(
                    self.app,
                    item.model,
                    item.version,
                    item.request_id or str(uuid.uuid4()),
                    item.inputs,
                    item.outputs,
                    self._redact,
                    self.settings.mode,
                    at=item.at,
                )
            except Exception:  # inputs we cannot read: this request is lost, the log goes on
                log.exception("payload log of %s: cannot turn a request to %s into events", self.app, item.model)
                with self._cond:
                    self._drop(item.model, item.events)
                continue
            self._batches.setdefault(item.model, []).extend((item.at, event) for event in events)

    def _write_batches(self, scratch: Path, everything: bool) -> None:
        size = self.settings.batch_records
        for model, waiting in list(self._batches.items()):
            while len(waiting) >= size or (everything and waiting):
                batch, waiting[:] = waiting[:size], waiting[size:]
                self._write(scratch, model, batch)
            if not waiting:
                del self._batches[model]

    def _sleep(self, seconds: float) -> None:
        self._abandon.wait(seconds)

    def _object_uri(self, model: str, at: float) -> str:
        hour = datetime.fromtimestamp(at, UTC).strftime("%Y/%m/%d/%H")
        name = f"{int(at * 1000)}-{uuid.uuid4().hex[:8]}.{self.format}"
        return f"{self.destination}/{self.app}/{model}/{hour}/{name}"

    def _write(self, scratch: Path, model: str, batch: list[tuple[float, dict[str, Any]]]) -> None:
        """One object, named after its first event's time; its events are counted as dropped if it fails."""
        uri = self._object_uri(model, batch[0][0])
        path = scratch / uri.rsplit("/", 1)[1]
        events = [event for _, event in batch]
        try:
            (_write_parquet if self.format == "parquet" else _write_jsonl)(path, events)
            tenacity.Retrying(
                stop=tenacity.stop_after_attempt(self._attempts) | tenacity.stop_when_event_set(self._abandon),
                wait=tenacity.wait_exponential(multiplier=self._backoff_s, max=30),
                retry=tenacity.retry_if_not_exception_type(_PERMANENT),
                sleep=self._sleep,
                reraise=True,
            )(upload, path, uri)
        except Exception as exc:  # storage down, no access, a full disk: the server carries on, the counters tell
            with self._cond:
                self.failed_batches += 1
                self._drop(model, len(batch))
            log.error("payload log of %s: %d events not written to %s: %s", self.app, len(batch), uri, exc)
        else:
            self.written_batches += 1
            self.written_records += len(batch)
        finally:
            path.unlink(missing_ok=True)


def read_payload_log(uri_or_path: str | Path) -> list[dict[str, Any]]:
    """Every event in the objects under a local folder (a path or file:// URI), by object name, then line."""
    parsed = parse_uri(resolve_uri(str(uri_or_path)))
    if parsed.scheme != "file":
        raise ValueError(f"{uri_or_path}: read_payload_log reads a local folder; copy the objects here first")
    root = Path(parsed.key)
    events: list[dict[str, Any]] = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file()):
        if path.suffix == ".jsonl":
            events.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
        else:
            import pyarrow.parquet as pq

            events.extend({**row, "data": json.loads(row["data"])} for row in pq.read_table(path).to_pylist())
    return events
