"""`modelfleet keys`: API keys, of which only hashes are stored."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from serve_apps.auth import KeysConfigError, append_key

from .console import bad_input, err, out

app = typer.Typer(help="API keys: create them; only their hashes are stored.", no_args_is_help=True)


@app.command("create")
def keys_create(
    file: Annotated[Path, typer.Option("--file", help="Keys file to append to (created if absent).")],
    name: Annotated[str, typer.Option("--name", help="Who holds the key (for audit; not secret).")],
    scope: Annotated[list[str], typer.Option("--scope", help="admin, invoke:* or invoke:<model>; repeatable.")],
) -> None:
    """Create an API key, store its hash and scopes in FILE, print the key once."""
    try:
        key = append_key(file, name, scope)
    except (KeysConfigError, ValueError) as exc:
        bad_input(str(exc).splitlines()[0])
    err.print(
        f"stored the hash of key {name!r} ({', '.join(scope)}) in {file}; this is the only time the key is shown:"
    )
    out.print(key, markup=False)
