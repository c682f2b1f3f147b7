"""The registry's tables (SQLAlchemy 2 declarative). Changes go through a new Alembic revision in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AliasEventRow",
    "Base",
    "DeploymentRow",
    "ModelRow",
    "RolloutEventRow",
    "RolloutRow",
    "UtcDateTime",
    "VersionRow",
]


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, stored in UTC and read back as an aware datetime (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime}


class ModelRow(Base):
    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(256))
    # The highest version number ever given: a deleted version's number is never given again.
    last_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class VersionRow(Base):
    """Immutable once written: a new artifact, or new metadata, is a new version."""

    __tablename__ = "model_versions"

    model: Mapped[str] = mapped_column(ForeignKey("registered_models.name"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(64))
    module: Mapped[str | None] = mapped_column(String(512))
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"inputs": [...], "outputs": [...]} as in a spec
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON)  # dataset, code, parent, command, runtime
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(256))


class AliasEventRow(Base):
    """Append-only: each row says an alias of a model came to point at a version (or at none: removed) at a time.
    Which version held an alias from when to when is read from consecutive rows."""

    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_model_alias", "model", "alias", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(ForeignKey("registered_models.name"))
    alias: Mapped[str] = mapped_column(String(128))
    version: Mapped[int | None] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(256))


class DeploymentRow(Base):
    """One deployment of a model version into an app (deploy, run, build or a rollout step), whatever its outcome."""

    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_model_version", "model", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(ForeignKey("registered_models.name"))
    version: Mapped[int] = mapped_column(Integer)
    target: Mapped[str] = mapped_column(Text)  # where: a Ray address, a cluster name, a serve config file
    outcome: Mapped[str] = mapped_column(
        String(32)
    )  # deployed | failed | replaced | stopped | built (a serve config written) | rolled_back
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(256))


class RolloutRow(Base):
    """A rollout of a candidate version of an app's model: its plan, and where it stands (read by whoever resumes
    it). `active` holds "app/model/target" while it runs, is paused or is being promoted, else NULL: at most one
    active per model."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(Text)
    active: Mapped[str | None] = mapped_column(Text, unique=True)
    strategy: Mapped[str] = mapped_column(String(16))
    baseline_version: Mapped[str] = mapped_column(String(64))
    candidate_version: Mapped[str] = mapped_column(String(64))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)  # the candidate, steps, interval, limits, what to promote
    state: Mapped[str] = mapped_column(String(16))  # running | paused | promoting | promoted | rolled_back | aborted
    step: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    controller: Mapped[str | None] = mapped_column(String(256))  # host:pid of the command driving it
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class RolloutEventRow(Base):
    """Append-only: what happened to a rollout (started, each step, a verdict, a pause, the end), by whom."""

    __tablename__ = "rollout_events"
    __table_args__ = (Index("ix_rollout_events_rollout", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
