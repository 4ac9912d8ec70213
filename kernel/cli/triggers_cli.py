"""Triggers: ``legato triggers [--json]`` lists the active ones, ``legato triggers pause|resume
WORKFLOW`` holds a workflow's triggers back and lets them go (:mod:`legato.triggers`).

The triggers themselves run under ``legato serve`` and ``legato worker``
(:mod:`legato.trigger_host`); these commands only read and write the store.
"""

from __future__ import annotations

import json

import click

from ..triggers import list_triggers
from .group import _Refused, _trio_run, main
from .output import _iso, _when
from .permits import _who  # who paused, for the record
from .store import _opened, _read_engine, _store_option


@main.group(invoke_without_command=True)
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def triggers(ctx: click.Context, store: str, as_json: bool) -> None:
    """The triggers of the active workflow versions: type, schedule, next due, last fired, paused.

    Triggers fire under `legato serve` and `legato worker`. `legato triggers pause WORKFLOW`
    holds a workflow's triggers back (what they would fire meanwhile is dropped, not caught up);
    `legato triggers resume WORKFLOW` lets them go again.
    """
    if ctx.invoked_subcommand is not None:
        return
    engine = _read_engine(store)
    rows: list = []

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            rows.extend(await list_triggers(engine))

    _trio_run(main_task)
    if as_json:
        click.echo(json.dumps([{**row, "next_due": _iso(row["next_due"]), "last_fired": _iso(row["last_fired"])}
                               for row in rows], indent=2))
        return
    if not rows:
        click.echo("no active workflow has triggers (a workflow's `time_triggers` start it on a schedule)")
        return
    width = max(len(row["workflow_id"]) for row in rows)
    for row in rows:
        head = f"{row['workflow_id']:<{width}}  v{row['version']}"
        if row["problem"]:
            click.echo(f"{head}  does not load: {row['problem']}")
            continue
        due = _iso(row["next_due"]) if row["next_due"] is not None else "-"
        fired = _when(row["last_fired"]) if row["last_fired"] is not None else "never"
        if row["disabled"]:
            click.echo(f"{head}  {row['type']:<6} {row['schedule']}  disabled by the workflow's properties")
            continue
        click.echo(f"{head}  {row['type']:<6} {row['schedule']}  next {due}  last fired {fired}"
                   f"{'  PAUSED' if row['paused'] else ''}")


def _set_paused(store: str, workflow: str, paused: bool) -> bool:
    from ..storage import VersionNotFound

    here, given = click.get_current_context(), click.core.ParameterSource.COMMANDLINE
    if here.get_parameter_source("store") is not given and here.parent is not None \
            and here.parent.get_parameter_source("store") is given:
        store = here.parent.params["store"]  # `legato triggers --store X pause W`

    engine = _read_engine(store)
    changed: list[bool] = []

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            try:
                await engine.storage.require_definition(workflow, "latest")
            except VersionNotFound as exc:
                raise _Refused(str(exc)) from None
            changed.append(await engine.storage.set_triggers_paused(workflow, paused, by=_who()))

    _trio_run(main_task)
    return changed[0]


@triggers.command()
@click.argument("workflow")
@_store_option
def pause(workflow: str, store: str) -> None:
    """Hold back every trigger of WORKFLOW (any version) until `legato triggers resume`."""
    if _set_paused(store, workflow, True):
        click.echo(f"{workflow}: triggers paused (what they would fire meanwhile is dropped)")
    else:
        click.echo(f"{workflow}: triggers were paused already")


@triggers.command()
@click.argument("workflow")
@_store_option
def resume(workflow: str, store: str) -> None:
    """Let WORKFLOW's triggers fire again (from now: what fell due while paused does not fire)."""
    if _set_paused(store, workflow, False):
        click.echo(f"{workflow}: triggers resumed")
    else:
        click.echo(f"{workflow}: triggers were not paused")
