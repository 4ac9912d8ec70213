"""Triggers: ``legato triggers [--json]`` lists the active ones, ``legato triggers pause|resume
WORKFLOW`` holds a workflow's triggers back and lets them go (:mod:`legato.triggers`).

The triggers themselves run under ``legato serve`` and ``legato worker``
(:mod:`legato.trigger_host`); these commands only read and write the store.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from .group import _Refused, _trio_run, main
from .output import _iso, _when
from .permits import _who  # who paused, for the record
from .store import _opened, _read_engine, _store_option


def _schedule(raw: Any) -> str:
    """A trigger item as one short phrase (``CRON 0 6 * * * Europe/Dublin``)."""
    if not isinstance(raw, dict):
        return ""
    words = [str(raw.get("type", "")).upper()]
    for key in ("cron", "expression", "interval", "timezone"):
        if raw.get(key) is not None:
            words.append(str(raw[key]))
    return " ".join(words)


async def _rows(engine) -> list[dict[str, Any]]:
    from ..definition import DefinitionError
    from ..triggers import WORKFLOW_FIELDS, disabled_fields

    storage = engine.storage
    active = await storage.list_active_versions()
    paused = {p["workflow_id"]: p for p in await storage.list_paused_triggers()}
    checkpoints = {(c["workflow_id"], c["key"]): c for c in await storage.list_trigger_checkpoints()}
    now = time.time()
    rows = []
    for wid, version in active.items():
        stored = await storage.get_definition(wid, version)
        workflow = stored.document.get("workflow") if stored is not None else None
        if not isinstance(workflow, dict) or not any(workflow.get(f) for f in WORKFLOW_FIELDS):
            continue
        try:
            definition = engine.load(stored.document)
        except DefinitionError as exc:
            rows.append({"workflow_id": wid, "version": version, "type": None, "key": None, "schedule": "",
                         "next_due": None, "last_fired": None, "paused": wid in paused,
                         "problem": "; ".join(str(p) for p in exc.problems[:3]), "disabled": False})
            continue
        off = disabled_fields(stored.document)
        for type_name, defs in definition.triggers.items():
            trigger_type = engine.plugins.triggers.types[type_name]()
            for tdef in defs:
                if trigger_type.field in off:
                    rows.append({"workflow_id": wid, "version": version, "type": type_name, "key": tdef.key,
                                 "schedule": _schedule(tdef.raw), "next_due": None, "last_fired": None,
                                 "paused": wid in paused, "problem": None, "disabled": True})
                    continue
                found = checkpoints.get((wid, tdef.key))
                try:
                    due = trigger_type.next_due(tdef, found["value"] if found else None, now, workflow_id=wid)
                except Exception:  # a plugin that cannot say: the listing goes on
                    due = None
                rows.append({"workflow_id": wid, "version": version, "type": type_name, "key": tdef.key,
                             "schedule": _schedule(tdef.raw), "next_due": due,
                             "last_fired": found["fired_at"] if found else None, "paused": wid in paused,
                             "problem": None, "disabled": False})
    return rows


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
            rows.extend(await _rows(engine))

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
