"""The model registry's store (registry/), one conformance class run on SQLite and on a real PostgreSQL: versions
numbered per model and read back as written, aliases with their whole history, deletion refused while a version is
in use, concurrent writers from two processes, and migrations that run once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from registry import Registry, RegistryError, parse_ref
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401 - fixtures
from tests.helpers import ROOT, wait_until

SHA = "a" * 64


def _register(registry: Registry, name: str = "digits", **extra) -> int:
    return registry.register(
        name, artifact_uri=f"file:///models/{name}.safetensors", sha256=SHA, format="safetensors", **extra
    ).version


class TestRegistry:
    @pytest.fixture(params=["sqlite", "postgresql"])
    def registry(self, request: pytest.FixtureRequest, tmp_path: Path):
        url = (
            f"sqlite:///{tmp_path / 'registry.db'}"
            if request.param == "sqlite"
            else request.getfixturevalue("postgres_url")
        )
        store = Registry(url)
        yield store
        store.close()

    def test_versions_count_from_one_per_model_and_read_back_as_written(self, registry: Registry) -> None:
        first = registry.register(
            "digits",
            artifact_uri="s3://models/digits/1/model.safetensors",
            sha256=SHA,
            format="safetensors",
            module="examples.digits.model:DigitsNet",
            signature={"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]},
            metrics={"accuracy": 0.97},
            params={"epochs": 20},
            tags={"team": "vision"},
            lineage={
                "dataset": {"uri": "sklearn:digits", "sha256": "b" * 64},
                "code": {"commit": "abc", "dirty": False},
            },
            actor="alice",
        )
        assert (first.name, first.version, first.uri) == ("digits", 1, "models:/digits/1")
        assert _register(registry) == 2
        assert _register(registry, "fraud") == 1, "numbers are per model"
        read = registry.get("models:/digits/1")
        assert read == first
        assert read.metrics == {"accuracy": 0.97} and read.lineage["code"] == {"commit": "abc", "dirty": False}
        assert read.created_by == "alice"
        assert registry.get("digits").version == 2, "a bare name is its newest version"
        assert [v.version for v in registry.versions("digits")] == [1, 2]
        assert registry.models() == ["digits", "fraud"]

    def test_an_alias_points_at_one_version_and_every_move_is_kept(self, registry: Registry) -> None:
        for _ in range(3):
            _register(registry)
        registry.set_alias("digits", "champion", 1, actor="alice")
        registry.set_alias("digits", "challenger", 2, actor="bob")
        registry.set_alias("digits", "champion", 2, actor="bob")  # promoted
        registry.set_alias("digits", "champion", 3, actor="carol")
        registry.remove_alias("digits", "challenger", actor="carol")
        assert registry.aliases("digits") == {"champion": 3}
        assert registry.get("digits@champion").version == 3
        assert registry.get("models:/digits/3").aliases == ["champion"]
        history = registry.alias_history("digits")
        assert [(s.alias, s.version, s.set_by, s.end is None) for s in history] == [
            ("champion", 1, "alice", False),
            ("challenger", 2, "bob", False),
            ("champion", 2, "bob", False),
            ("champion", 3, "carol", True),
        ]
        champion = [s for s in history if s.alias == "champion"]
        assert all(a.end == b.start for a, b in zip(champion, champion[1:], strict=False)), "spans meet: no gap"
        with pytest.raises(RegistryError, match="has no alias 'challenger'"):
            registry.get("digits@challenger")

    def test_a_version_in_use_cannot_be_deleted(self, registry: Registry) -> None:
        _register(registry)
        _register(registry)
        registry.set_alias("digits", "champion", 1)
        with pytest.raises(RegistryError, match=r"models:/digits/1 is aliased \(champion\)"):
            registry.delete_version("digits", 1)
        registry.record_deployment("fleet", "digits", 2, "127.0.0.1:6379", "deployed")
        with pytest.raises(RegistryError, match="models:/digits/2 is deployed in fleet at 127.0.0.1:6379"):
            registry.delete_version("digits", 2)
        registry.record_deployment("fleet", "digits", 2, "127.0.0.1:6379", "removed")
        registry.delete_version("digits", 2)
        assert [v.version for v in registry.versions("digits")] == [1]
        assert _register(registry) == 3, "a deleted version's number never comes back: it named other bytes"

    def test_what_an_app_serves_replaces_what_it_served_at_that_target(self, registry: Registry) -> None:
        for _ in range(3):
            _register(registry)
        head, laptop = "10.0.0.5:6379", "run:127.0.0.1:8000"
        registry.record_served("fleet", head, [("digits", 1)], "deployed")
        registry.record_served("fleet", laptop, [("digits", 1)], "deployed")
        registry.record_served("fleet", head, [("digits", 2)], "deployed")  # an update: 1 replaced there
        registry.record_served("fleet", head, [("digits", 3)], "failed")  # and 2 still serves
        with pytest.raises(RegistryError, match=rf"deployed in fleet at {laptop}"):
            registry.delete_version("digits", 1)
        registry.record_served("fleet", laptop, [("digits", 1)], "stopped")
        registry.delete_version("digits", 1)
        with pytest.raises(RegistryError, match=rf"models:/digits/2 is deployed in fleet at {head}"):
            registry.delete_version("digits", 2)
        registry.delete_version("digits", 3)  # its deploy failed: never served
        outcomes = [(d.target, d.version, d.outcome) for d in registry.deployments("digits")]
        assert outcomes == [
            (head, 1, "deployed"),
            (laptop, 1, "deployed"),
            (head, 2, "deployed"),
            (head, 1, "replaced"),
            (head, 3, "failed"),
            (laptop, 1, "stopped"),
        ]

    def test_a_rollout_is_stored_with_its_plan_and_every_step_and_one_at_a_time(self, registry: Registry) -> None:
        plan = {"steps": [5, 50, 100], "candidate": {"artifact": {"uri": "models:/digits/2"}}}
        started = registry.start_rollout("fleet", "digits", "127.0.0.1:6379", "canary", "1", "2", plan)
        assert (started.state, started.step, started.weight, started.plan) == ("running", 0, 0.0, plan)
        with pytest.raises(RegistryError, match=r"a rollout of fleet/digits on 127.0.0.1:6379 is already active \(#"):
            registry.start_rollout("fleet", "digits", "127.0.0.1:6379", "canary", "1", "3", plan)
        other = registry.start_rollout("fleet", "digits", "10.0.0.5:6379", "ab", "1", "3", plan)  # another cluster
        registry.update_rollout(started.id, step=1, weight=50.0, event=("step", {"weight": 50}))
        paused = registry.update_rollout(started.id, expect=("running",), state="paused", event=("paused", {}))
        with pytest.raises(RegistryError, match=r"is paused, not running"):
            registry.update_rollout(started.id, expect=("running",), state="paused")
        assert registry.rollout("fleet", "digits", "127.0.0.1:6379") == paused and paused.active
        assert registry.rollout("fleet", "digits") == registry.get_rollout(other.id), "the newest of any target"
        done = registry.update_rollout(started.id, state="rolled_back", reason="error rate 20%", event=("breach", {}))
        assert not done.active
        again = registry.start_rollout("fleet", "digits", "127.0.0.1:6379", "canary", "1", "3", plan)
        assert again.id != started.id, "a finished rollout no longer blocks a new one"
        kinds = [(e.kind, e.detail) for e in registry.rollout_events(started.id)]
        assert kinds == [("started", plan), ("step", {"weight": 50}), ("paused", {}), ("breach", {})]
        with pytest.raises(ValueError, match="cannot set"):
            registry.update_rollout(started.id, plan={})

    def test_unknown_names_and_bad_references_say_what_is_wrong(self, registry: Registry) -> None:
        _register(registry)
        with pytest.raises(RegistryError, match="no model 'fraud' is registered"):
            registry.get("fraud")
        with pytest.raises(RegistryError, match="has no version 9"):
            registry.get("digits/9")
        with pytest.raises(RegistryError, match="has no version 9"):
            registry.set_alias("digits", "champion", 9)
        with pytest.raises(RegistryError, match="is not a model reference"):
            parse_ref("models:/digits:3")
        with pytest.raises(RegistryError, match="is not an alias"):
            registry.set_alias("digits", "1st", 1)
        with pytest.raises(RegistryError, match="sha256 must be 64 lowercase hex digits"):
            registry.register("digits", artifact_uri="x", sha256="abc", format="safetensors")
        with pytest.raises(RegistryError, match="is not a model name"):
            registry.register("../etc", artifact_uri="x", sha256=SHA, format="safetensors")

    def test_opening_migrates_once_to_the_newest_revision(self, registry: Registry) -> None:
        again = Registry(registry.url)  # a second open finds the tables at head and changes nothing
        with again.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0002"
            tables = set(inspect(connection).get_table_names())
        again.close()
        assert {"registered_models", "model_versions", "alias_events", "deployments", "rollouts"} <= tables

    @pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
    def test_a_store_of_the_first_revision_is_upgraded_with_its_versions_numbered_on(
        self, backend: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        from registry.store import _engine, migrate

        url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
        engine = _engine(url)
        migrate(engine, "0001")
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO registered_models (name, created_at, created_by) VALUES ('digits', :at, 'ci')"),
                {"at": datetime.now(UTC)},
            )
            for version in (1, 2):
                connection.execute(
                    text(
                        "INSERT INTO model_versions (model, version, artifact_uri, sha256, format, signature, metrics, "
                        "params, tags, lineage, created_at, created_by) VALUES ('digits', :v, 'x', :sha, "
                        "'safetensors', '{}', '{}', '{}', '{}', '{}', :at, 'ci')"
                    ),
                    {"v": version, "sha": SHA, "at": datetime.now(UTC)},
                )
        engine.dispose()
        upgraded = Registry(url)
        try:
            assert [v.version for v in upgraded.versions("digits")] == [1, 2]
            assert _register(upgraded) == 3
        finally:
            upgraded.close()

    def test_two_processes_writing_at_once_leave_a_consistent_store(self, registry: Registry, tmp_path: Path) -> None:
        """Each process registers 25 versions and points `latest` at each as it goes, both starting at once: 50
        versions numbered 1 to 50, none lost or doubled, and an alias history of 50 moves by both."""
        go = tmp_path / "go"
        writer = textwrap.dedent(
            f"""
            import os, sys, time
            from registry import Registry
            store = Registry(sys.argv[1])
            open(sys.argv[3] + "." + sys.argv[2], "w").close()  # ready
            while not os.path.exists(sys.argv[3]):
                time.sleep(0.001)
            for _ in range(25):
                v = store.register("digits", artifact_uri="file:///m", sha256="{SHA}", format="safetensors").version
                store.set_alias("digits", "latest", v, actor=sys.argv[2])
            store.close()
            """
        )
        logs = [tmp_path / f"writer-{i}.log" for i in range(2)]
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", writer, registry.url, f"writer-{i}", str(go)],
                cwd=ROOT,
                stdout=logs[i].open("wb"),
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        for w, log in zip(writers, logs, strict=True):  # both have opened the store: start them together
            wait_until(lambda: all(go.with_name(f"go.writer-{i}").exists() for i in range(2)), 60, "ready", w, log)
        go.touch()
        assert [w.wait(timeout=120) for w in writers] == [0, 0], [log.read_text()[-2000:] for log in logs]
        assert [v.version for v in registry.versions("digits")] == list(range(1, 51))
        history = registry.alias_history("digits")
        assert len(history) == 50 and {s.set_by for s in history} == {"writer-0", "writer-1"}
        assert registry.aliases("digits")["latest"] == history[-1].version
