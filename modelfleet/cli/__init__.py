"""The `modelfleet` command: the one place that ties the rooms together.

One module per command group, over one shared console module (`console`):
`serve` (validate, schema, build, deploy, status), `run`, `keys`, `cluster`,
`load` (loadtest, tune), `models` (the registry), `rollout`, `slo` and `audit`. This module only assembles them.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, cast

import typer
from rich.markup import escape

from groundwork.version import VERSION

from . import audit, cluster, keys, load, models, rollout, run, serve, slo
from .console import err

__all__ = ["app", "main"]

app = typer.Typer(
    name="modelfleet",
    help="Serve ML models as autoscaling endpoints on Ray Serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        print(f"modelfleet {VERSION}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Serve ML models as autoscaling endpoints on Ray Serve."""


for command in (
    serve.validate,
    serve.schema,
    serve.build,
    run.run,
    serve.deploy,
    serve.status,
    load.loadtest,
    load.tune,
):
    app.command()(command)
app.add_typer(keys.app, name="keys")
app.add_typer(cluster.app, name="cluster")
app.add_typer(models.app, name="models")
app.add_typer(rollout.app, name="rollout")
app.add_typer(slo.app, name="slo")
app.add_typer(audit.app, name="audit")


def main() -> None:
    """Run the command; a usage error (an unknown option, a wrong value) is one line and exit 2, as a bad spec is."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's own click's ClickException and UsageError derive from it
        if type(exc).__name__ == "NoArgsIsHelpError":  # `modelfleet` or a group alone: its help, as typer shows it
            from typer import rich_utils

            rich_utils.rich_format_error(cast(Any, exc))  # typer's own click's ClickException, typed as click's
        else:
            context = getattr(exc, "ctx", None)
            where = f"{context.command_path}: " if context is not None else ""
            message = exc.format_message().replace("Value error, ", "")  # pydantic's prefix, from typer's coercion
            err.print(f"[red]error:[/red] {escape(where + message)}", soft_wrap=True)
        code = getattr(exc, "exit_code", 2)
    except typer.Abort:  # EOF or Ctrl-C outside a command's own handling
        err.print("interrupted")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
