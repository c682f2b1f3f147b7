"""What a replica shows on the console `run` prints: its own lines and every warning, not Serve's bookkeeping.

Serve logs its internals at INFO from inside each replica ("Started <...SharedRouterLongPollClient object at
0x7f...>" on the first routed request, and the like), and Ray forwards a replica's stderr to the driver's
console. Those lines still go to the replica's log file; only the console handler leaves them out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray

_RAY_PACKAGE = str(Path(ray.__file__).parent)


def _ours_or_a_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.pathname.startswith(_RAY_PACKAGE)


def keep_serve_internals_off_the_console() -> None:
    """Call in a replica's constructor (Serve configured its logger before): idempotent."""
    for handler in logging.getLogger("ray.serve").handlers:
        if type(handler) is logging.StreamHandler and _ours_or_a_warning not in handler.filters:
            handler.addFilter(_ours_or_a_warning)
