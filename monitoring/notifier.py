"""Webhooks: tell other systems what changed (a model version registered, a rollout step) as signed CloudEvents.

Callers are short CLI commands, so `send` only queues: a daemon thread posts, retrying what may pass later (408,
429, 5xx, no connection) with exponential backoff. `close()` waits for the queue up to a bound, and whatever is not
delivered then, or after its last attempt, or does not fit the queue, is appended to a dead-letter file: a failing
webhook never raises into the caller nor holds it past that bound, and no event is lost without a trace.

Events are CloudEvents 1.0 in structured JSON mode, signed as Standard Webhooks sign them, so a receiver verifies
with any Standard Webhooks library. `webhook-id` is the event id on every attempt, for receivers to de-duplicate.
"""

from __future__ import annotations

import atexit
import collections
import fnmatch
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
import tenacity
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from groundwork.local_rays import modelfleet_home
from groundwork.specs import SpecError, Strict, load_spec_file

__all__ = ["CloudEvent", "Notifier", "NotifierConfig", "WebhookSpec", "config_path", "load_config", "notifier_from_env"]

log = logging.getLogger("modelfleet.notifier")
CONFIG_ENV = "MODELFLEET_WEBHOOKS"
SCHEMA_COMMAND = "python -m monitoring.notifier"  # prints the JSON schema
NOT_DELIVERED_BEFORE_EXIT = "not delivered before exit"


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {url!r}")
    return url


class WebhookSpec(Strict):
    url: Annotated[str, AfterValidator(_http_url)] = Field(description="Where events are POSTed (http or https).")
    secret_env: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the Standard Webhooks secret (whsec_<base64>); never the secret.",
    )
    events: list[str] = Field(
        default=["*"], min_length=1, description="fnmatch patterns on the event type, e.g. 'rollout.*'."
    )
    timeout_s: float = Field(
        default=5, gt=0, description="Per attempt: connecting, sending and waiting for the answer."
    )

    def wants(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events)


class NotifierConfig(Strict):
    webhooks: list[WebhookSpec] = Field(
        default=[], description="Receivers; every event goes to each whose events match."
    )
    max_attempts: int = Field(default=5, ge=1, description="Attempts per event per webhook before it is dead-lettered.")
    backoff_s: float = Field(default=0.5, ge=0, description="Wait after the first failed attempt; doubles after each.")
    max_backoff_s: float = Field(default=30, ge=0, description="Longest wait between attempts, Retry-After included.")
    dead_letter: Path | None = Field(
        default=None,
        description="JSON lines of undelivered events (relative: to this file); default in MODELFLEET_HOME.",
    )

    @model_validator(mode="after")
    def _backoff_within_cap(self) -> NotifierConfig:
        if self.backoff_s > self.max_backoff_s:
            raise ValueError(f"backoff_s {self.backoff_s:g} exceeds max_backoff_s {self.max_backoff_s:g}; lower it")
        return self


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event; `model_dump_json(exclude_none=True)` is its structured-mode body."""

    model_config = ConfigDict(frozen=True)
    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]


def config_path() -> tuple[Path, bool]:
    """The config file, and whether the user named it (then it must exist) rather than it being the default."""
    named = os.environ.get(CONFIG_ENV)
    return (Path(named), True) if named else (modelfleet_home() / "webhooks.yaml", False)


def _signer(hook: WebhookSpec, environ: Mapping[str, str]) -> Webhook:
    secret = environ.get(hook.secret_env)
    if not secret:
        raise ValueError(f"environment variable {hook.secret_env} (the secret of {hook.url}) is not set; set it")
    try:
        return Webhook(secret)
    except (ValueError, EmptyWebhookSecretError):  # binascii.Error is a ValueError
        raise ValueError(f"{hook.secret_env} (the secret of {hook.url}) is not a valid whsec_<base64> secret") from None


def load_config(path: str | Path, environ: Mapping[str, str] = os.environ) -> NotifierConfig:
    """Read a webhooks file; SpecError with one line naming file, field and fix (a missing secret included)."""
    path = Path(path)
    config = load_spec_file(path, NotifierConfig, "a webhooks file", "docs/notifier.md", SCHEMA_COMMAND)
    for i, hook in enumerate(config.webhooks):
        try:
            _signer(hook, environ)
        except ValueError as exc:
            raise SpecError(path, f"webhooks[{i}].secret_env", str(exc)) from None
    if config.dead_letter is not None:
        config = config.model_copy(update={"dead_letter": path.parent / config.dead_letter.expanduser()})
    return config


def notifier_from_env() -> Notifier:
    """The notifier the config file describes; one that does nothing when there is no file."""
    path, named = config_path()
    if not named and not path.exists():
        return Notifier()
    return Notifier(load_config(path))


class _Retryable(Exception):
    def __init__(self, error: str, retry_after_s: float | None = None):
        super().__init__(error)
        self.retry_after_s = retry_after_s


class _Rejected(Exception):
    """An answer that will not change on retry (other 4xx, 3xx)."""


@dataclass(eq=False)
class _Job:
    hook: WebhookSpec
    signer: Webhook
    event: CloudEvent
    body: bytes
    attempts: int = 0
    settled: bool = False  # delivered or dead-lettered, by the worker or by close(); whoever is first


class Notifier:
    """Sends events to the configured webhooks from a daemon thread; `close()` (or `with`) before exiting."""

    def __init__(
        self, config: NotifierConfig | None = None, environ: Mapping[str, str] = os.environ, queue_size: int = 10_000
    ):
        self.config = config or NotifierConfig()
        self.dead_letter = self.config.dead_letter or modelfleet_home() / "webhooks.dead-letter.jsonl"
        self._hooks = [(hook, _signer(hook, environ)) for hook in self.config.webhooks]
        self._queue_size = queue_size
        self._backoff = tenacity.wait_exponential(multiplier=self.config.backoff_s, max=self.config.max_backoff_s)
        self._pending: collections.deque[_Job] = collections.deque()
        self._current: _Job | None = None
        self._cond = threading.Condition()
        self._file_lock = threading.Lock()
        self._closed = False
        self._abandon = threading.Event()  # close() gave up waiting: stop retrying
        self._worker: threading.Thread | None = None
        if self._hooks:
            self._client = httpx.Client(follow_redirects=False)
            self._worker = threading.Thread(target=self._run, name="modelfleet-notifier", daemon=True)
            self._worker.start()
            atexit.register(self.close)  # a caller that forgets close() still gets its events out, or dead-lettered

    @property
    def enabled(self) -> bool:
        return bool(self._hooks)

    def send(self, source: str, type: str, data: Mapping[str, Any], subject: str | None = None) -> CloudEvent:
        """Queue an event for every webhook whose `events` match its type; returns at once, never raises for them."""
        event = CloudEvent(source=source, type=type, subject=subject, data=dict(data))
        body = event.model_dump_json(exclude_none=True).encode()  # data that is not JSON is the caller's bug: raise
        for hook, signer in self._hooks:
            if not hook.wants(type):
                continue
            job, refused = _Job(hook, signer, event, body), ""
            with self._cond:
                if self._closed:
                    refused = "sent after the notifier was closed"
                elif len(self._pending) >= self._queue_size:
                    refused = f"queue full ({self._queue_size} events waiting)"
                else:
                    self._pending.append(job)
                    self._cond.notify()
            if refused:
                self._settle(job, refused)
        return event

    def close(self, timeout_s: float = 10) -> None:
        """Stop taking events, wait up to `timeout_s` for those queued, and dead-letter what is left."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        atexit.unregister(self.close)
        if self._worker is None:
            return
        self._worker.join(timeout_s)
        if not self._worker.is_alive():
            self._client.close()
            return
        self._abandon.set()
        with self._cond:
            left = ([self._current] if self._current else []) + list(self._pending)
            self._pending.clear()
        for job in left:
            self._settle(job, NOT_DELIVERED_BEFORE_EXIT)

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- the worker thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending or self._abandon.is_set():
                    return
                job = self._current = self._pending.popleft()
            self._deliver(job)
            with self._cond:
                self._current = None

    def _deliver(self, job: _Job) -> None:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.config.max_attempts) | tenacity.stop_when_event_set(self._abandon),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Retryable),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            retrying(self._post, job)
        except Exception as exc:  # _Retryable, _Rejected, or a bug here: the event is dead-lettered all the same
            self._settle(job, str(exc) if isinstance(exc, _Retryable | _Rejected) else f"{type(exc).__name__}: {exc}")
        else:
            if not self._settle(job, ""):
                log.debug("event %s reached %s after close() had dead-lettered it", job.event.id, job.hook.url)

    def _post(self, job: _Job) -> None:
        job.attempts += 1
        now = int(time.time())
        headers = {
            "content-type": "application/cloudevents+json",
            "webhook-id": job.event.id,
            "webhook-timestamp": str(now),
            "webhook-signature": job.signer.sign(job.event.id, datetime.fromtimestamp(now, UTC), job.body),
        }
        try:
            response = self._client.post(job.hook.url, content=job.body, headers=headers, timeout=job.hook.timeout_s)
        except httpx.TransportError as exc:  # no connection, a timeout, a broken answer: may pass later
            raise _Retryable(f"{exc.__class__.__name__}: {exc or 'no detail'}") from None
        status = response.status_code
        if response.is_success:
            return
        if status in (408, 429) or status >= 500:
            raise _Retryable(f"HTTP {status}", _seconds(response.headers.get("retry-after")))
        hint = " (redirects are not followed; configure the final URL)" if response.is_redirect else ""
        raise _Rejected(f"HTTP {status}{hint}")

    def _wait(self, state: tenacity.RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _Retryable) and failure.retry_after_s is not None:
            return min(failure.retry_after_s, self.config.max_backoff_s)
        return self._backoff(state)

    def _sleep(self, seconds: float) -> None:
        self._abandon.wait(seconds)

    # ---- outcomes ------------------------------------------------------------------------------------------

    def _settle(self, job: _Job, error: str) -> bool:
        """Record a job's outcome once (an empty error: delivered); False if it was already settled."""
        with self._cond:
            if job.settled:
                return False
            job.settled = True
        if error:
            self._write_dead_letter(job, error)
        return True

    def _write_dead_letter(self, job: _Job, error: str) -> None:
        event = job.event.model_dump(mode="json", exclude_none=True)
        at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        line = json.dumps({"webhook": job.hook.url, "event": event, "error": error, "attempts": job.attempts, "at": at})
        try:
            with self._file_lock:
                self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.dead_letter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode() + b"\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:  # the log is then the only copy
            log.error(
                "cannot write the dead-letter file %s (%s); this line is the only copy: %s", self.dead_letter, exc, line
            )
            return
        log.warning(
            "webhook %s: event %s not delivered: %s; see %s", job.hook.url, job.event.id, error, self.dead_letter
        )


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds; None when absent or an HTTP date (then our own backoff applies)."""
    try:
        return max(0.0, float(retry_after)) if retry_after else None
    except ValueError:
        return None


if __name__ == "__main__":
    print(json.dumps(NotifierConfig.model_json_schema(), indent=2))
