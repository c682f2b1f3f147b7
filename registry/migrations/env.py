"""Alembic's entry point for the registry's migrations, run by `registry.store.migrate` on the connection it hands
over (`config.attributes["connection"]`); no alembic.ini."""

from __future__ import annotations

from alembic import context

from registry.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
)
with context.begin_transaction():
    context.run_migrations()
