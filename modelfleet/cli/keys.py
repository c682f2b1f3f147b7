"""`modelfleet keys`: API keys, of which only hashes are stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from serve_apps.auth import KeysConfigError, append_key, read_keys, remove_key

from .console import bad_input, err, out
from .events import audit

app = typer.Typer(help="API keys: create, list and revoke them; only their hashes are stored.", no_args_is_help=True)

KeysPath = Annotated[Path, typer.Argument(help="The keys file (YAML).", show_default=False)]

# Running apps were handed the hashes when they were deployed and never reread the file (serve_apps/auth.py).
TAKES_EFFECT = (
    "running apps accept it until redeployed (`modelfleet deploy`, a restarted `modelfleet run`, "
    "or a rebuilt `modelfleet build` config)"
)


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
    audit("key.created", f"keys:{file.resolve()}", details={"name": name, "scopes": scope})  # never the key
    err.print(
        f"stored the hash of key {name!r} ({', '.join(scope)}) in {file}; this is the only time the key is shown:"
    )
    out.print(key, markup=False)


@app.command("list")
def keys_list(
    file: KeysPath,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output: [{name, scopes}, ...].")] = False,
) -> None:
    """List the keys in FILE: each one's name and scopes (never a hash)."""
    try:
        keys = read_keys(file)
    except KeysConfigError as exc:
        bad_input(str(exc))
    if as_json:
        out.print_json(json.dumps([{"name": k.name, "scopes": list(k.scopes)} for k in keys]))
        return
    if not keys:
        out.print(f"{file}: no keys", markup=False)
        return
    width = max(len("NAME"), *(len(k.name) for k in keys))
    out.print(f"{'NAME':<{width}}  SCOPES", markup=False)
    for k in keys:
        out.print(f"{k.name:<{width}}  {', '.join(k.scopes)}", markup=False)


@app.command("revoke", help=f"Remove the key named NAME from FILE. The file changes at once; {TAKES_EFFECT}.")
def keys_revoke(
    file: KeysPath, name: Annotated[str, typer.Argument(help="The key's name.", show_default=False)]
) -> None:
    try:
        gone, left = remove_key(file, name)
    except KeysConfigError as exc:
        bad_input(str(exc))
    audit("key.revoked", f"keys:{file.resolve()}", details={"name": gone.name, "scopes": list(gone.scopes)})
    out.print(
        f"revoked key {gone.name!r} ({', '.join(gone.scopes)}) in {file}, {len(left)} left; {TAKES_EFFECT}",
        markup=False,
    )
