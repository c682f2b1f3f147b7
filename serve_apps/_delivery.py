"""Answering callers who wait together on one piece of work (a batch, a coalesced call): each its own result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

__all__ = ["deliver"]


async def deliver(futures: list[asyncio.Future[Any]], results: Awaitable[list[Any]]) -> None:
    """Each future gets its entry of `results`, in order; an entry that is an Exception is raised to that caller
    alone. If `results` fails (or answers for another number of callers), every caller gets the failure; if it is
    cancelled, they get a RuntimeError and the cancellation goes on. Callers that gave up are skipped."""
    try:
        answers = await results
        if len(answers) != len(futures):
            raise RuntimeError(f"work for {len(futures)} callers gave {len(answers)} answers")
    except BaseException as exc:
        failure = exc if isinstance(exc, Exception) else RuntimeError("the work was cancelled")
        for future in futures:
            if not future.done():
                future.set_exception(failure)
        if not isinstance(exc, Exception):
            raise
        return
    for future, answer in zip(futures, answers, strict=True):
        if future.done():
            continue
        if isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)
