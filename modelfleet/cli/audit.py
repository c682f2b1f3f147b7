"""`modelfleet audit`: verify the audit log's chain, query it, ship it (monitoring/audit.py, docs/audit.md)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from monitoring.audit import FOLDER_ENV, audit_folder, query, ship, verify
from providers.storage import StorageError, UnsupportedScheme

from .console import bad_input, duration_s, err, failed, out

app = typer.Typer(help="The audit log: verify its chain, query it, ship it.", no_args_is_help=True)

FolderOption = Annotated[
    Path | None,
    typer.Option(
        "--path",
        help=f"The audit log's folder (default: ${FOLDER_ENV}, else $MODELFLEET_HOME/audit).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
TEN_YEARS_S = 10 * 365 * 24 * 3600
COLUMNS = ("seq", "time", "actor", "action", "target", "outcome", "source", "request_id")


def _folder(path: Path | None) -> Path:
    folder = path or audit_folder()
    if not folder.is_dir():
        bad_input(f"no audit log at {folder}; pass --path or set {FOLDER_ENV}")
    return folder


def _since(text: str) -> datetime:
    if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*[smh]?\s*", text):
        return datetime.now(UTC) - timedelta(seconds=duration_s(text, "--since", at_most_s=TEN_YEARS_S))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        bad_input(
            f"--since {text!r}: expected a time back from now (30m, 1h) or a UTC time such as 2026-12-01T00:00:00Z"
        )
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _printable(value: Any) -> str:
    """A field as one safe terminal cell: what a client sent (a path, a request id) cannot move the cursor."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@app.command("verify")
def audit_verify(path: FolderOption = None, as_json: JsonOption = False) -> None:
    """Check the hash chain: exit 0 if intact, else 1 naming each edited, removed, reordered or unreadable line."""
    folder = _folder(path)
    try:
        result = verify(folder)
    except OSError as exc:
        failed(f"cannot read the audit log at {folder}: {exc}")
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
    else:
        for problem in result.problems:
            err.print(f"[red]problem:[/red] {escape(problem.message)}", soft_wrap=True)
        for note in result.notes:
            err.print(f"note: {escape(note)}", soft_wrap=True)
        if result.ok and result.records:
            out.print(
                f"audit log intact: {_plural(result.records, 'record')} (seq {result.first_seq}..{result.last_seq}) "
                f"in {_plural(result.files, 'file')}",
                markup=False,
            )
        elif result.ok:
            out.print(f"audit log empty: no records in {folder}", markup=False)
    if not result.ok:
        raise typer.Exit(1)


@app.command("query")
def audit_query(
    path: FolderOption = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only records from then on: 30m, 1h, or 2026-12-01T00:00:00Z.")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Who: user:alice, key:ci, or just the name (alice, ci).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Records about this model (models:/NAME/..., NAME@alias, NAME).")
    ] = None,
    action: Annotated[str | None, typer.Option("--action", help="An action or a pattern: deploy, 'rollout.*'.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of the whole records.")] = False,
) -> None:
    """Records that match every filter given, oldest first (run `verify` to trust them)."""
    folder = _folder(path)
    moment = _since(since) if since is not None else None
    try:
        records = query(folder, since=moment, actor=actor, model=model, action=action)
    except OSError as exc:
        failed(f"cannot read the audit log at {folder}: {exc}")
    if as_json:
        out.print_json(json.dumps(records))
        return
    if not records:
        out.print("no records match", markup=False)
        return
    rows = [[_printable(record[c]) for c in COLUMNS] for record in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    for row in [[c.upper() for c in COLUMNS], *rows]:
        out.print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), markup=False)


@app.command("ship")
def audit_ship(
    uri: Annotated[
        str,
        typer.Argument(
            help="Where to: s3://bucket/audit/, gs://, az://, file:///path or a folder.", show_default=False
        ),
    ],
    path: FolderOption = None,
    include_current: Annotated[
        bool, typer.Option("--include-current", help="Also upload the open file as it is now.")
    ] = False,
) -> None:
    """Upload each closed log file not yet shipped to URI (best: write-once storage, out of an intruder's reach)."""
    folder = _folder(path)
    try:
        names = ship(folder, uri, include_current=include_current)
    except UnsupportedScheme as exc:
        bad_input(str(exc))
    except StorageError as exc:
        failed(str(exc))
    except (OSError, ValueError) as exc:
        failed(f"shipping {folder} to {uri}: {exc}")
    if names:
        out.print(f"shipped {_plural(len(names), 'file')} to {uri}: {', '.join(names)}", markup=False)
    else:
        out.print(f"nothing new to ship to {uri}", markup=False)
