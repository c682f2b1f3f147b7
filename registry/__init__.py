"""The model registry: registered models, immutable versions with lineage, aliases with their whole history, and a
record of every deployment. SQLite by default (`$MODELFLEET_HOME/registry.db`, no set-up), PostgreSQL for teams
(`MODELFLEET_REGISTRY_URL=postgresql+psycopg://...`), behind SQLAlchemy 2 with Alembic migrations."""

from .artifacts import artifact_root, publish
from .rollouts import ACTIVE_STATES, Rollout, RolloutEvent
from .store import (
    AliasSpan,
    DeploymentRecord,
    ModelVersion,
    Registry,
    RegistryError,
    VersionRef,
    parse_ref,
    registry_url,
)

__all__ = [
    "ACTIVE_STATES",
    "AliasSpan",
    "DeploymentRecord",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "Rollout",
    "RolloutEvent",
    "VersionRef",
    "artifact_root",
    "parse_ref",
    "publish",
    "registry_url",
]
