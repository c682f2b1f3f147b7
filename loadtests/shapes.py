"""Load shapes as data: a shape is a list of stages, each a user count held until a time.

`constant`, `ramp`, `step` and `spike` are built from the run's users and
duration; the runner drives Locust through the stages with one generic
`LoadTestShape`. Stages are also the tuner's concurrency sweep, and each
stage is measured on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Shape", "Stage", "doubling", "stages", "sweep"]


class Shape(str, Enum):
    constant = "constant"  # all users for the whole run
    ramp = "ramp"  # from a tenth of the users up to all of them, in ten even stages
    step = "step"  # users/steps more every duration/steps
    spike = "spike"  # a quarter of the users, all of them for the middle fifth, a quarter again


@dataclass(frozen=True)
class Stage:
    until_s: float  # the stage lasts until this many seconds after the start
    users: int
    spawn_rate: float  # users started (or stopped) per second on entering the stage


def stages(shape: Shape, users: int, duration_s: float, spawn_rate: float | None = None, steps: int = 4) -> list[Stage]:
    """The stages of `shape` for a run of `users` at most and `duration_s` in all."""
    if users < 1 or duration_s <= 0:
        raise ValueError(f"a load shape needs users >= 1 and a positive duration, got {users} users for {duration_s}s")
    rate = spawn_rate or float(users)  # default: everyone within a second, so stages measure their user count
    return _PLANS[shape](users, duration_s, rate, steps)


def _constant(users: int, duration_s: float, rate: float, _steps: int) -> list[Stage]:
    return [Stage(duration_s, users, rate)]


def _spike(users: int, duration_s: float, rate: float, _steps: int) -> list[Stage]:
    base = max(1, users // 4)
    return [Stage(duration_s * 0.4, base, rate), Stage(duration_s * 0.6, users, rate), Stage(duration_s, base, rate)]


def _levels(users: int, duration_s: float, rate: float, count: int) -> list[Stage]:
    """`count` even steps up to `users`, each held for an equal share of the run."""
    levels = sorted({max(1, round(users * (i + 1) / count)) for i in range(count)})
    return [Stage(duration_s * (i + 1) / len(levels), level, rate) for i, level in enumerate(levels)]


def _ramp(users: int, duration_s: float, rate: float, _steps: int) -> list[Stage]:
    return _levels(users, duration_s, rate, 10)


def _step(users: int, duration_s: float, rate: float, steps: int) -> list[Stage]:
    return _levels(users, duration_s, rate, max(1, min(steps, users)))


# A new shape: one Shape member and one function here.
_PLANS = {Shape.constant: _constant, Shape.ramp: _ramp, Shape.step: _step, Shape.spike: _spike}


def doubling(max_users: int, start: int = 1) -> list[int]:
    """User counts for a concurrency sweep: start, 2*start, ... up to and including max_users."""
    levels, users = [], max(1, start)
    while users < max_users:
        levels.append(users)
        users *= 2
    return levels + [max_users]


def sweep(levels: list[int], stage_s: float) -> list[Stage]:
    """One stage per user count, each `stage_s` long (the tuner's sweep of a configuration)."""
    return [Stage(stage_s * (i + 1), users, float(users)) for i, users in enumerate(levels)]
