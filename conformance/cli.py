"""``legato conformance``: added to the ``legato`` command through the ``legato.commands`` entry
point, so the kernel's CLI never imports the suites."""

from __future__ import annotations

import json
import sys

import click

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


@click.command()
@click.argument("names", nargs=-1)
@click.option("--kind", type=click.Choice(["step", "storage", "trigger"]), default=None,
              help="Only step types, only storage, or only trigger types.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("-k", "keyword", default=None, help="Only tests matching this pytest -k expression.")
def conformance(names: tuple[str, ...], kind: str | None, as_json: bool, keyword: str | None) -> None:
    """Run the conformance suites for installed plugins (all, or the NAMES given).

    Exits 1 if any test fails. Plugin authors: subclass legato.conformance.StepTypeSuite (or
    StorageSuite, TriggerSuite) in your own tests to run the same suite under plain pytest.
    """
    try:
        from legato.conformance.runner import run_conformance
    except ImportError as exc:
        click.echo(f"legato: the conformance suites need pytest ({exc}); pip install pytest", err=True)
        sys.exit(EXIT_INVALID)
    try:
        result = run_conformance(list(names), kind, ["-k", keyword] if keyword else None)
    except ValueError as exc:
        click.echo(f"legato: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    rows, errors = result["rows"], result["errors"]
    failed = bool(errors) or any(r["failed"] or r["errors"] for r in rows) or not rows
    if as_json:
        click.echo(json.dumps(result, indent=2))
        sys.exit(EXIT_FAILED if failed else EXIT_OK)
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(box=None, pad_edge=False)
    for column in ("plugin", "kind", "distribution", "version", "passed", "failed", "skipped", "result"):
        table.add_column(column)
    for r in rows:
        bad = r["failed"] or r["errors"]
        table.add_row(r["name"], r["kind"], r["distribution"], r["version"], str(r["passed"]),
                      str(len(r["failed"]) + len(r["errors"])), str(len(r["skipped"])),
                      "[red]FAIL[/]" if bad else "[green]pass[/]")
    console.print(table)
    for r in rows:
        for error in r["errors"]:
            console.print(f"[red]{r['name']}[/]: profile failed to load: {error}", markup=True, highlight=False)
        for f in r["failed"]:
            console.print(f"[red]{r['name']}[/] {f['test']}: {f['message']}", markup=True, highlight=False)
        for s in r["skipped"]:
            console.print(f"[dim]{r['name']} {s['test']} skipped: {s['reason']}[/]", markup=True, highlight=False)
    for error in errors:
        console.print(f"[red]{error}[/]", markup=True, highlight=False)
    if not rows:
        console.print("no conformance profiles installed", highlight=False)
    sys.exit(EXIT_FAILED if failed else EXIT_OK)
