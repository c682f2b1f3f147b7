"""The registry's events, sent to webhooks (monitoring/notifier.py) by the commands that change the registry.

The webhooks file is read before the change is made, so a mistake in it stops the command with nothing changed;
delivery afterwards never fails the command (what is not delivered goes to the dead-letter file).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from groundwork import SpecError

from .console import bad_input

__all__ = ["REGISTRY_SOURCE", "ROLLOUT_SOURCE", "Send", "registry_events"]

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
    try:
        yield lambda type, data, subject: notifier.send(source, type, data, subject)
    finally:
        notifier.close()
