"""What the commands that change state tell: events to webhooks (monitoring/notifier.py) and lines in the audit log
(monitoring/audit.py).

The webhooks file is read before the change is made, so a mistake in it stops the command with nothing changed;
delivery afterwards never fails the command (what is not delivered goes to the dead-letter file). Every event is
also an audit line, as is every state change without an event (a deploy, a key, a cluster): written after the
change, so a log that cannot be written is a warning that names what it missed, never an undone change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from groundwork import SpecError

from .console import bad_input, log

__all__ = ["REGISTRY_SOURCE", "ROLLOUT_SOURCE", "Send", "audit", "registry_events"]

REGISTRY_SOURCE = "/modelfleet/registry"
ROLLOUT_SOURCE = "/modelfleet/rollouts"
Send = Callable[[str, dict[str, Any], str | None], object]


@contextmanager
def registry_events(source: str = REGISTRY_SOURCE) -> Iterator[Send]:
    """`send(type, data, subject)` for events from `source`; they leave before the command exits (bounded)."""
    from monitoring.notifier import notifier_from_env

    try:
        notifier = notifier_from_env()
    except SpecError as exc:
        bad_input(str(exc))

    def send(type: str, data: dict[str, Any], subject: str | None) -> None:
        notifier.send(source, type, data, subject)
        audit(type, _audit_target(source, subject), details=data)

    try:
        yield send
    finally:
        notifier.close()


def _audit_target(source: str, subject: str | None) -> str:
    """The target of an event's audit line: `models:/NAME/VERSION` or `models:/NAME@ALIAS` for the registry's (what
    `audit query --model` finds), `rollouts:/APP/MODEL` for a rollout's."""
    if subject is None:
        return source
    return f"models:/{subject}" if source == REGISTRY_SOURCE else f"rollouts:/{subject}"


def audit(action: str, target: str, outcome: str = "ok", details: dict[str, Any] | None = None) -> None:
    """One line in the audit log, by this OS user. Never raises: the change it records has been made."""
    from monitoring.audit import audit_log_from_env

    if details is not None and "model" not in details and target.startswith("rollouts:/"):
        details = {**details, "model": target.rsplit("/", 1)[-1]}
    try:
        audit_log_from_env().append(action, target, outcome, details=details)
    except Exception as exc:
        log.warning(f"the audit log did not take {action} of {target} ({outcome}): {exc}")
