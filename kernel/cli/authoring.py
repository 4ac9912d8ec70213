"""Commands for writing definitions, no store needed: ``legato validate``, ``schema`` and
``plugins``."""

from __future__ import annotations

import json
import sys

import click

from .group import EXIT_INVALID, main, _plugins, _print_problems, _print_warnings


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def validate(file: str, as_json: bool) -> None:
    """Check a definition (JSON or YAML) and report every problem, located by JSON pointer."""
    from ..cel import CelCompiler
    from ..definition import DefinitionError, load_definition

    plugins = _plugins()
    try:
        definition = load_definition(file, plugins.step_types.types, CelCompiler(plugins.cel_functions.functions),
                                     plugins.triggers.types)
    except DefinitionError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "problems": [
                {"pointer": p.pointer, "message": p.message} for p in exc.problems]}, indent=2))
        else:
            _print_problems(exc)
        sys.exit(EXIT_INVALID)
    nested = len(definition.all_by_id) - len(definition.steps)
    if as_json:
        click.echo(json.dumps({"valid": True, "workflow": definition.workflow_id, "steps": len(definition.steps),
                               "steps_in_loops": nested,
                               "warnings": [{"pointer": w.pointer, "message": w.message}
                                            for w in definition.warnings]}))
    else:
        _print_warnings(definition)
        inside = f", {nested} more in loop bodies" if nested else ""
        click.echo(f"{file}: valid ({definition.workflow_id}, {len(definition.steps)} steps{inside})")


@main.command()
@click.option("--path", "show_path", is_flag=True, help="Print where the schema file is instead (for editor settings).")
def schema(show_path: bool) -> None:
    """Print the JSON Schema (draft 2020-12) of the definition format, for editors to complete and check
    definitions (see the README's "Editor support")."""
    from ..schema import SCHEMA_PATH

    if show_path:
        click.echo(str(SCHEMA_PATH))
    else:
        click.echo(SCHEMA_PATH.read_text(encoding="utf-8"), nl=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins: what each provides, its distribution and version, and whether it can run here."""
    rows = _plugins().infos()
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("name", "kind", "plugin", "distribution", "version", "status"):
        table.add_column(column)
    for row in rows:
        status = "available" if row.unavailable is None else f"unavailable: {row.unavailable}"
        # Escaped: `pip install 'legato[sql]'` is text, not rich markup.
        table.add_row(*(escape(cell) for cell in (row.name, row.kind, row.plugin, row.distribution, row.version,
                                                   status)))
    Console(width=None if sys.stdout.isatty() else 200).print(table)
