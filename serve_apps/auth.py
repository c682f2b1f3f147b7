"""API keys with per-model scopes.

Keys are hashed (sha256) as soon as they are read, in the process that reads
them; only hashes reach the ingress replicas, Serve's config or any log.
Scopes: `invoke:<model>` (call and read one model), `invoke:*` (every model)
and `admin` (everything, including /metrics).

Sources, merged:
- a keys file (YAML, hashes only; `modelfleet keys create|list|revoke` manage it):
      keys:
        - {name: ci-bot, sha256: "<hex>", scopes: ["invoke:digits"]}
- the environment variable MODELFLEET_API_KEYS, for secrets injected at run time:
      MODELFLEET_API_KEYS="<key>=invoke:digits,invoke:echo;<other key>=admin"

Both are read when an app is deployed (`run`, `deploy`, `build`): its ingress
replicas hold the hashes they were given and never reread the file, so a
change to it takes effect when the app is redeployed.

Keys are stored as plain, unsalted sha256: fast to check on every request,
and safe only because a key is as strong as a random 256-bit token. So keys
from the environment must look generated (`MIN_KEY_CHARS` characters, varied);
a guessable one such as `secret` is refused rather than hashed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "ENV_VAR",
    "ApiKey",
    "KeysConfigError",
    "KeyRing",
    "append_key",
    "hash_key",
    "new_key",
    "read_keys",
    "remove_key",
]

ENV_VAR = "MODELFLEET_API_KEYS"
_SCOPE = re.compile(r"^(admin|invoke:(\*|[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?))$")


MIN_KEY_CHARS = 32
_MIN_DISTINCT_CHARS = 12  # "a" * 40 is long but not random
_NEW_KEY_HINT = (
    "generate one with `modelfleet keys create`, or use 32 or more random characters (`openssl rand -base64 32`)"
)


def weak_key_reason(key: str) -> str | None:
    """Why `key` is too guessable to protect by an unsalted hash, or None."""
    if len(key) < MIN_KEY_CHARS:
        return f"it has {len(key)} characters, fewer than {MIN_KEY_CHARS}"
    if len(set(key)) < _MIN_DISTINCT_CHARS:
        return f"it repeats too few characters ({len(set(key))} distinct)"
    return None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "mf_" + secrets.token_urlsafe(32)


class ApiKey(BaseModel):
    """One key as stored: a name for humans and audit, its sha256, its scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Who or what holds the key (never the key itself).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the key, hex.")
    scopes: tuple[str, ...] = Field(min_length=1, description="admin, invoke:* or invoke:<model>.")

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in scopes if not _SCOPE.match(s)]
        if bad:
            raise ValueError(f"unknown scope(s) {bad}; use admin, invoke:* or invoke:<model>")
        return scopes

    def allows(self, model: str | None) -> bool:
        """May this key call `model` (None: an admin-only route)?"""
        if "admin" in self.scopes:
            return True
        return model is not None and ("invoke:*" in self.scopes or f"invoke:{model}" in self.scopes)


class KeysConfigError(ValueError):
    """A keys file or MODELFLEET_API_KEYS value that cannot be used (the message never holds a key)."""


class KeyRing:
    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_hashes(cls, entries: list[dict] | None) -> KeyRing:
        """Rebuild from `hashes()`: how keys cross processes (to replicas, into Serve configs)."""
        return cls([ApiKey.model_validate(entry) for entry in entries or []])

    def hashes(self) -> list[dict]:
        """Names, hashes and scopes as plain data; never a key."""
        return [key.model_dump(mode="json") for key in self.keys]

    def find(self, presented: str) -> ApiKey | None:
        """The key whose hash matches, comparing against every key so timing reveals nothing."""
        digest = hash_key(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found

    @classmethod
    def load(cls, keys_file: Path | None = None, env: dict[str, str] | None = None) -> KeyRing:
        keys = _from_file(keys_file) if keys_file else []
        raw = (os.environ if env is None else env).get(ENV_VAR, "")
        return cls(keys + _from_env(raw))


def _from_file(path: Path) -> list[ApiKey]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise KeysConfigError(
            f"{path}: keys file not found; create it with `modelfleet keys create --file {path}`"
        ) from None
    except yaml.YAMLError as exc:
        raise KeysConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys", []), list):
        raise KeysConfigError(f"{path}: expected `keys: [{{name, sha256, scopes}}, ...]`")
    keys = []
    for i, entry in enumerate(data.get("keys", [])):
        try:
            keys.append(ApiKey.model_validate(entry))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise KeysConfigError(f"{path}: keys[{i}].{where}: {err['msg'].removeprefix('Value error, ')}") from None
    return keys


def _from_env(raw: str) -> list[ApiKey]:
    keys = []
    for i, item in enumerate(part for part in raw.split(";") if part.strip()):
        key, sep, scopes = item.strip().partition("=")
        if not sep or not key or not scopes:
            raise KeysConfigError(f"{ENV_VAR}: entry {i + 1} must look like <key>=<scope>[,<scope>...]")
        weak = weak_key_reason(key)
        if weak:
            raise KeysConfigError(f"{ENV_VAR}: entry {i + 1}: the key is too weak to use ({weak}); {_NEW_KEY_HINT}")
        try:
            keys.append(
                ApiKey(
                    name=f"{ENV_VAR}[{i + 1}]", sha256=hash_key(key), scopes=tuple(s.strip() for s in scopes.split(","))
                )
            )
        except ValidationError as exc:
            raise KeysConfigError(
                f"{ENV_VAR}: entry {i + 1}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
            ) from None
    return keys


def append_key(path: Path, name: str, scopes: list[str]) -> str:
    """Create a key, store its hash in `path` (created if absent), return the key itself (shown once)."""
    key = new_key()
    try:
        entry = ApiKey(name=name, sha256=hash_key(key), scopes=tuple(scopes))
    except ValidationError as exc:
        raise KeysConfigError(f"--scope: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    existing = _from_file(path) if path.exists() else []
    if any(k.name == name for k in existing):
        raise KeysConfigError(f"{path}: a key named {name!r} exists; pick another --name")
    _write_keys(path, [*existing, entry])
    return key


def read_keys(path: Path) -> list[ApiKey]:
    """The keys stored in a keys file (the environment's aside)."""
    return _from_file(path)


def remove_key(path: Path, name: str) -> tuple[ApiKey, list[ApiKey]]:
    """Remove the key named `name` from `path`; return it and the keys that remain."""
    keys = _from_file(path)
    gone = next((k for k in keys if k.name == name), None)
    if gone is None:
        held = ", ".join(repr(k.name) for k in keys) or "none"
        raise KeysConfigError(f"{path}: no key named {name!r} (keys: {held}); see `modelfleet keys list {path}`")
    left = [k for k in keys if k is not gone]
    _write_keys(path, left)
    return gone, left


def _write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace `path` in one step: a reader sees the old file or the new one, never half of either, even after a
    crash. The new file is private (mode 0600) from its first byte."""
    text = yaml.safe_dump({"keys": [k.model_dump(mode="json") for k in keys]}, sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
