"""The registry's store: what `modelfleet models ...`, `deploy` and rollouts read and write.

Versions are numbered per model from 1 and never change once written. Aliases (`champion`, `challenger`, any name)
point at versions; every move is a new row, so which version held an alias from when to when is never lost (MLflow
keeps only where an alias points now). Deleting a version is refused while an alias points at it or while it is
deployed.

Concurrent writers (two processes registering or moving aliases at once) leave a consistent store: on SQLite every
transaction takes the write lock when it begins (`BEGIN IMMEDIATE`, waiting up to 30 s for another), on PostgreSQL
a registration locks its model's row, and a key taken by another writer meanwhile (a new model's first version) is a
primary-key conflict, and the write is tried again. A deleted version's number is never given again.

Rollouts (rollouts.py) keep their plan and where they stand here too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from groundwork.local_rays import modelfleet_home

from ._common import RegistryError, _actor, _now
from .rollouts import RolloutRecords
from .schema import AliasEventRow, DeploymentRow, ModelRow, VersionRow

__all__ = ["AliasSpan", "ModelVersion", "Registry", "RegistryError", "VersionRef", "parse_ref", "registry_url"]

T = TypeVar("T")

NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
ALIAS = r"[A-Za-z][A-Za-z0-9_-]{0,127}"
_REF = re.compile(rf"(?:models:/)?(?P<name>{NAME})(?:/(?P<version>[1-9][0-9]{{0,8}})|@(?P<alias>{ALIAS}))?")
_ALIAS = re.compile(ALIAS)
WRITE_ATTEMPTS = 10  # a version number another writer took meanwhile: try again with the next one
MIGRATION_LOCK = 7_313_029_581  # PostgreSQL advisory lock: one process migrates at a time


class VersionRef(BaseModel):
    """`NAME`, `NAME/VERSION` or `NAME@ALIAS`, with or without `models:/` in front."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}" + (f"/{self.version}" if self.version else f"@{self.alias}" if self.alias else "")


def parse_ref(ref: str) -> VersionRef:
    match = _REF.fullmatch(ref.strip())
    if match is None:
        raise RegistryError(
            f"{ref!r} is not a model reference: NAME, NAME/VERSION or NAME@ALIAS (optionally models:/ first); names "
            "are letters, digits, '_', '.', '-'"
        )
    version = match["version"]
    return VersionRef(name=match["name"], version=int(version) if version else None, alias=match["alias"])


class ModelVersion(BaseModel):
    """One registered version, as read back (with the aliases that point at it now)."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: int
    artifact_uri: str
    sha256: str
    format: str
    module: str | None
    signature: dict[str, Any]
    metrics: dict[str, Any]
    params: dict[str, Any]
    tags: dict[str, Any]
    lineage: dict[str, Any]
    created_at: datetime
    created_by: str
    aliases: list[str] = []

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class AliasSpan(BaseModel):
    """Version `version` held `alias` from `start` until `end` (None: it still does), set by `set_by`."""

    model_config = ConfigDict(frozen=True)

    alias: str
    version: int
    start: datetime
    end: datetime | None
    set_by: str


class DeploymentRecord(BaseModel):
    """Version `version` of `model` was `outcome` (deployed, failed, replaced, stopped, built) in `app` at `target`."""

    model_config = ConfigDict(frozen=True)

    app: str
    model: str
    version: int
    target: str
    outcome: str
    at: datetime
    actor: str


def registry_url() -> str:
    """`MODELFLEET_REGISTRY_URL`, or SQLite at `$MODELFLEET_HOME/registry.db`."""
    return os.environ.get("MODELFLEET_REGISTRY_URL") or f"sqlite:///{modelfleet_home() / 'registry.db'}"


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    # SQLAlchemy's recipe for pysqlite: let SQLAlchemy say when a transaction begins, and make it take the write lock
    # then, so two writers never both read "next version is 4".
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the store's tables to the newest revision (registry/migrations): on first use, and after an upgrade."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


class Registry(RolloutRecords):
    """The store at `url` (default: `registry_url()`), migrated to the newest revision when opened."""

    def __init__(self, url: str | None = None):
        self.url = url or registry_url()
        self.engine = _engine(self.url)
        migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine) as session, session.begin():
            yield session

    def _write(self, change: Callable[[Session], T]) -> T:
        """`change` in one transaction; again (bounded) when another writer took the same new key meanwhile."""
        for _ in range(WRITE_ATTEMPTS - 1):
            try:
                with self._session() as session:
                    return change(session)
            except IntegrityError:
                continue
        with self._session() as session:  # the last attempt: its conflict is the caller's
            return change(session)

    # ---- versions ---------------------------------------------------------

    def register(
        self,
        name: str,
        *,
        artifact_uri: str,
        sha256: str,
        format: str,
        module: str | None = None,
        signature: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """A new version of `name` (the model registered on its first version)."""
        if not re.fullmatch(NAME, name):
            raise RegistryError(f"{name!r} is not a model name: letters, digits, '_', '.', '-' (at most 128)")
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise RegistryError(f"sha256 must be 64 lowercase hex digits, got {sha256[:80]!r}")
        who, when = actor or _actor(), _now()

        def change(session: Session) -> ModelVersion:
            # Locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises): a second writer waits here, then reads
            # the number the first one gave, rather than conflict on it.
            model = session.get(ModelRow, name, with_for_update=True)
            if model is None:
                model = ModelRow(name=name, created_at=when, created_by=who, last_version=0)
                session.add(model)
                session.flush()
            latest = session.scalar(select(func.max(VersionRow.version)).where(VersionRow.model == name))
            model.last_version = max(model.last_version, latest or 0) + 1  # a deleted number never comes back
            row = VersionRow(
                model=name,
                version=model.last_version,
                artifact_uri=artifact_uri,
                sha256=sha256,
                format=format,
                module=module,
                signature=signature or {},
                metrics=metrics or {},
                params=params or {},
                tags=tags or {},
                lineage=lineage or {},
                created_at=when,
                created_by=who,
            )
            session.add(row)
            session.flush()
            return self._version(session, row)

        return self._write(change)

    def get(self, ref: str | VersionRef) -> ModelVersion:
        """The version `ref` names: `NAME/VERSION`, `NAME@ALIAS`, or `NAME` (its newest version)."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        with self._session() as session:
            self._known(session, ref.name)
            if ref.alias is not None:
                version = self._aliases(session, ref.name).get(ref.alias)
                if version is None:
                    raise RegistryError(f"model {ref.name!r} has no alias {ref.alias!r}")
            else:
                version = ref.version or session.scalar(
                    select(func.max(VersionRow.version)).where(VersionRow.model == ref.name)
                )
            row = session.get(VersionRow, (ref.name, version)) if version is not None else None
            if row is None:
                raise RegistryError(f"model {ref.name!r} has no version {version or ''}".rstrip())
            return self._version(session, row)

    def versions(self, name: str) -> list[ModelVersion]:
        with self._session() as session:
            self._known(session, name)
            rows = session.scalars(select(VersionRow).where(VersionRow.model == name).order_by(VersionRow.version))
            return [self._version(session, row) for row in rows]

    def models(self) -> list[str]:
        with self._session() as session:
            return list(session.scalars(select(ModelRow.name).order_by(ModelRow.name)))

    def delete_version(self, name: str, version: int) -> None:
        """Refused while an alias points at it or it is deployed (its last recorded deployment in an app stands)."""

        def change(session: Session) -> None:
            row = session.get(VersionRow, (name, version))
            if row is None:
                raise RegistryError(f"model {name!r} has no version {version}")
            holding = sorted(alias for alias, v in self._aliases(session, name).items() if v == version)
            if holding:
                raise RegistryError(
                    f"models:/{name}/{version} is aliased ({', '.join(holding)}): move or remove the alias first"
                )
            apps = self._deployed_in(session, name, version)
            if apps:
                raise RegistryError(f"models:/{name}/{version} is deployed in {', '.join(apps)}: remove it first")
            session.delete(row)

        self._write(change)

    # ---- aliases ----------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int, actor: str | None = None) -> None:
        if not _ALIAS.fullmatch(alias):
            raise RegistryError(f"{alias!r} is not an alias: a letter, then letters, digits, '_' or '-'")

        def change(session: Session) -> None:
            if session.get(VersionRow, (name, version)) is None:
                self._known(session, name)
                raise RegistryError(f"model {name!r} has no version {version}")
            session.add(AliasEventRow(model=name, alias=alias, version=version, at=_now(), actor=actor or _actor()))

        self._write(change)

    def remove_alias(self, name: str, alias: str, actor: str | None = None) -> None:
        def change(session: Session) -> None:
            if alias not in self._aliases(session, name):
                self._known(session, name)
                raise RegistryError(f"model {name!r} has no alias {alias!r}")
            session.add(AliasEventRow(model=name, alias=alias, version=None, at=_now(), actor=actor or _actor()))

        self._write(change)

    def aliases(self, name: str) -> dict[str, int]:
        with self._session() as session:
            self._known(session, name)
            return self._aliases(session, name)

    def alias_history(self, name: str) -> list[AliasSpan]:
        """Every span in which a version held an alias, oldest first."""
        with self._session() as session:
            self._known(session, name)
            events = session.scalars(
                select(AliasEventRow).where(AliasEventRow.model == name).order_by(AliasEventRow.id)
            ).all()
            return self._spans(list(events))

    @staticmethod
    def _spans(events: list[AliasEventRow]) -> list[AliasSpan]:
        spans: list[AliasSpan] = []
        current: dict[str, int] = {}  # alias -> its open span's index in `spans`
        for e in events:
            if e.alias in current:
                i = current.pop(e.alias)
                spans[i] = spans[i].model_copy(update={"end": e.at})
            if e.version is not None:
                current[e.alias] = len(spans)
                spans.append(AliasSpan(alias=e.alias, version=e.version, start=e.at, end=None, set_by=e.actor))
        return spans

    # ---- deployments ------------------------------------------------------

    def record_deployment(
        self, app: str, name: str, version: int, target: str, outcome: str, actor: str | None = None
    ) -> None:
        def change(session: Session) -> None:
            if session.get(VersionRow, (name, version)) is None:
                raise RegistryError(f"model {name!r} has no version {version}")
            session.add(
                DeploymentRow(
                    app=app,
                    model=name,
                    version=version,
                    target=target,
                    outcome=outcome,
                    at=_now(),
                    actor=actor or _actor(),
                )
            )

        self._write(change)

    def record_served(
        self, app: str, target: str, served: list[tuple[str, int]], outcome: str, actor: str | None = None
    ) -> None:
        """What app `app` at `target` serves now, as (model, version) pairs, after a deploy with `outcome`.

        "deployed": those versions are deployed there, and any other version recorded as deployed in that app at that
        target is "replaced" (a new version, or a model the app no longer has). "failed": the attempt is recorded and
        what served before still stands. "stopped": the app is gone from the target.
        """

        def change(session: Session) -> None:
            now, who = _now(), actor or _actor()
            rows = [(model, version, outcome) for model, version in served]
            if outcome == "deployed":
                rows += [(m, v, "replaced") for m, v in self._deployed_at(session, app, target) if (m, v) not in served]
            for model, version, what in rows:
                if session.get(VersionRow, (model, version)) is None:
                    raise RegistryError(f"model {model!r} has no version {version}")
                session.add(
                    DeploymentRow(app=app, model=model, version=version, target=target, outcome=what, at=now, actor=who)
                )

        self._write(change)

    def deployments(self, name: str) -> list[DeploymentRecord]:
        """Every recorded deployment of model `name`'s versions, oldest first."""
        with self._session() as session:
            self._known(session, name)
            rows = session.scalars(select(DeploymentRow).where(DeploymentRow.model == name).order_by(DeploymentRow.id))
            return [
                DeploymentRecord(
                    app=r.app,
                    model=r.model,
                    version=r.version,
                    target=r.target,
                    outcome=r.outcome,
                    at=r.at,
                    actor=r.actor,
                )
                for r in rows
            ]

    # ---- reading rows -----------------------------------------------------

    @staticmethod
    def _deployed(session: Session, *where: Any) -> list[tuple[str, str, str, int]]:
        """(app, target, model, version) of the records matching `where` whose newest outcome there is deployed."""
        newest: dict[tuple[str, str, str, int], str] = {}
        for app, target, model, version, outcome in session.execute(
            select(
                DeploymentRow.app,
                DeploymentRow.target,
                DeploymentRow.model,
                DeploymentRow.version,
                DeploymentRow.outcome,
            )
            .where(*where)
            .order_by(DeploymentRow.id)
        ):
            newest[(app, target, model, version)] = outcome
        return sorted(key for key, outcome in newest.items() if outcome == "deployed")

    def _deployed_at(self, session: Session, app: str, target: str) -> list[tuple[str, int]]:
        """(model, version) pairs deployed in `app` at `target`."""
        found = self._deployed(session, DeploymentRow.app == app, DeploymentRow.target == target)
        return [(model, version) for _, _, model, version in found]

    @staticmethod
    def _known(session: Session, name: str) -> None:
        if session.get(ModelRow, name) is None:
            raise RegistryError(f"no model {name!r} is registered")

    @staticmethod
    def _aliases(session: Session, name: str) -> dict[str, int]:
        """Where each alias points now: its newest event (None: removed)."""
        newest: dict[str, int | None] = {}
        for alias, version in session.execute(
            select(AliasEventRow.alias, AliasEventRow.version)
            .where(AliasEventRow.model == name)
            .order_by(AliasEventRow.id)
        ):
            newest[alias] = version
        return {alias: version for alias, version in newest.items() if version is not None}

    def _deployed_in(self, session: Session, name: str, version: int) -> list[str]:
        """Apps (as `app at target`) where this version is deployed."""
        found = self._deployed(session, DeploymentRow.model == name, DeploymentRow.version == version)
        return [f"{app} at {target}" for app, target, _, _ in found]

    def _version(self, session: Session, row: VersionRow) -> ModelVersion:
        aliases = sorted(alias for alias, v in self._aliases(session, row.model).items() if v == row.version)
        return ModelVersion(
            name=row.model,
            version=row.version,
            artifact_uri=row.artifact_uri,
            sha256=row.sha256,
            format=row.format,
            module=row.module,
            signature=row.signature,
            metrics=row.metrics,
            params=row.params,
            tags=row.tags,
            lineage=row.lineage,
            created_at=row.created_at,
            created_by=row.created_by,
            aliases=aliases,
        )
