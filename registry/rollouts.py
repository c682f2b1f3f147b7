"""Rollouts in the registry's store: the plan a rollout follows and where it stands, so that a killed `rollout`
command, or a second operator, can see it and carry it on; and an append-only record of everything it did.

The store keeps a rollout's plan as given (JSON: the candidate, the steps, the limits): it never needs to understand
it. At most one rollout of an app's model on one target is active (running or paused) at a time: `active` holds
"app/model/target" only then, under a unique constraint, so two operators starting at once cannot both succeed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ._common import RegistryError, _actor, _now
from .schema import RolloutEventRow, RolloutRow

__all__ = ["ACTIVE_STATES", "Rollout", "RolloutEvent", "RolloutRecords", "RolloutState"]

RolloutState = Literal["running", "paused", "promoting", "promoted", "rolled_back", "aborted"]
ACTIVE_STATES = ("running", "paused", "promoting")


class Rollout(BaseModel):
    """A rollout as stored."""

    model_config = ConfigDict(frozen=True)

    id: int
    app: str
    model: str
    target: str
    strategy: str
    baseline_version: str
    candidate_version: str
    plan: dict[str, Any]
    state: str
    step: int
    weight: float
    reason: str
    created_at: datetime
    created_by: str
    updated_at: datetime
    controller: str | None
    heartbeat_at: datetime | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


class RolloutEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    actor: str
    kind: str
    detail: dict[str, Any]


def _rollout(row: RolloutRow) -> Rollout:
    return Rollout.model_validate(row, from_attributes=True)


class RolloutRecords:
    """The rollout half of `Registry` (a mixin: it writes through the store's sessions)."""

    _session: Callable[[], AbstractContextManager[Session]]
    _write: Callable[[Callable[[Session], Any]], Any]

    def start_rollout(
        self,
        app: str,
        model: str,
        target: str,
        strategy: str,
        baseline_version: str,
        candidate_version: str,
        plan: dict[str, Any],
        actor: str | None = None,
    ) -> Rollout:
        """A new rollout, running at step 0 with no weight yet; refused while another of that model is active."""
        who, now = actor or _actor(), _now()

        def change(session: Session) -> Rollout:
            row = RolloutRow(
                app=app,
                model=model,
                target=target,
                active=f"{app}/{model}/{target}",
                strategy=strategy,
                baseline_version=baseline_version,
                candidate_version=candidate_version,
                plan=plan,
                state="running",
                step=0,
                weight=0.0,
                reason="",
                created_at=now,
                created_by=who,
                updated_at=now,
                controller=None,
                heartbeat_at=None,
            )
            session.add(row)
            session.flush()
            session.add(RolloutEventRow(rollout_id=row.id, at=now, actor=who, kind="started", detail=plan))
            return _rollout(row)

        try:
            with self._session() as session:
                return change(session)
        except IntegrityError:
            active = self.rollout(app, model, target)
            since = f" (#{active.id}, {active.state}, started by {active.created_by})" if active else ""
            raise RegistryError(
                f"a rollout of {app}/{model} on {target} is already active{since}: see `modelfleet rollout status`, "
                "or end it with `rollout promote` or `rollout abort`"
            ) from None

    def rollout(self, app: str, model: str, target: str | None = None) -> Rollout | None:
        """The newest rollout of `app`'s `model` (on `target`, if given), active or not."""
        query = select(RolloutRow).where(RolloutRow.app == app, RolloutRow.model == model)
        if target is not None:
            query = query.where(RolloutRow.target == target)
        with self._session() as session:
            row = session.scalars(query.order_by(RolloutRow.id.desc()).limit(1)).first()
            return _rollout(row) if row is not None else None

    def get_rollout(self, rollout_id: int) -> Rollout:
        with self._session() as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise RegistryError(f"no rollout #{rollout_id}")
            return _rollout(row)

    def update_rollout(
        self,
        rollout_id: int,
        *,
        expect: tuple[str, ...] | None = None,
        event: tuple[str, dict[str, Any]] | None = None,
        actor: str | None = None,
        **fields: Any,
    ) -> Rollout:
        """Set `fields` (state, step, weight, reason, controller, heartbeat_at) and record `event` (kind, detail), in
        one transaction; when `expect` is given, only from one of those states (RegistryError otherwise): two
        commands acting on one rollout at once cannot both move it."""
        unknown = set(fields) - {"state", "step", "weight", "reason", "controller", "heartbeat_at"}
        if unknown:
            raise ValueError(f"update_rollout cannot set {sorted(unknown)}")
        who, now = actor or _actor(), _now()

        def change(session: Session) -> Rollout:
            row = session.get(RolloutRow, rollout_id, with_for_update=True)
            if row is None:
                raise RegistryError(f"no rollout #{rollout_id}")
            if expect is not None and row.state not in expect:
                raise RegistryError(f"rollout #{rollout_id} is {row.state}, not {' or '.join(expect)}")
            for name, value in fields.items():
                setattr(row, name, value)
            if "state" in fields:
                row.active = f"{row.app}/{row.model}/{row.target}" if fields["state"] in ACTIVE_STATES else None
            row.updated_at = now
            if event is not None:
                kind, detail = event
                session.add(RolloutEventRow(rollout_id=rollout_id, at=now, actor=who, kind=kind, detail=detail))
            session.flush()
            return _rollout(row)

        result: Rollout = self._write(change)
        return result

    def rollout_events(self, rollout_id: int) -> list[RolloutEvent]:
        with self._session() as session:
            rows = session.scalars(
                select(RolloutEventRow).where(RolloutEventRow.rollout_id == rollout_id).order_by(RolloutEventRow.id)
            )
            return [RolloutEvent(at=r.at, actor=r.actor, kind=r.kind, detail=r.detail) for r in rows]
