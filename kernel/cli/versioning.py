"""Stored versions of a workflow: ``legato push``, ``versions`` and ``activate``."""

from __future__ import annotations

import json
from typing import Any

import click

from .group import _Refused, main, _trio_run
from .store import _engine, _load_or_exit, _opened, _read_engine, _store_option
from .output import _iso, _when


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--no-activate", is_flag=True,
              help="Store the version without making it the active one (what `start` runs by default).")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the stored version as JSON.")
def push(file: str, no_activate: bool, store: str, as_json: bool) -> None:
    """Validate FILE and store it as a new immutable version of its workflow, made active.

    Pushing a document identical to a stored version stores nothing new and says which version
    it is (made active again, unless --no-activate). `legato start WORKFLOW` runs a stored version.
    """
    engine = _engine(store)
    definition = _load_or_exit(engine, file)
    found: dict[str, Any] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            found["version"] = await engine.storage.push_definition(
                definition.workflow_id, definition.document, activate=not no_activate)

    _trio_run(main_task)
    v = found["version"]
    if as_json:
        click.echo(json.dumps({"workflow_id": v.workflow_id, "version": v.version, "active": v.active,
                               "new": v.new, "created_at": _iso(v.created_at)}))
        return
    state = "active" if v.active else "not active: `legato activate " + f"{v.workflow_id} {v.version}` makes it so"
    if v.new:
        click.echo(f"{v.workflow_id} v{v.version} stored ({state})")
    else:
        click.echo(f"{v.workflow_id}: {file} is identical to v{v.version} (stored {_when(v.created_at)}); "
                   f"nothing new stored ({state})")


@main.command()
@click.argument("workflow")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def versions(workflow: str, store: str, as_json: bool) -> None:
    """List the stored versions of WORKFLOW, oldest first; the active one is marked."""
    engine = _read_engine(store)
    rows: list[Any] = []

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            rows.extend(await engine.storage.list_versions(workflow))
            if not rows:
                raise _Refused(await engine.storage._no_version(workflow, "active"))

    _trio_run(main_task)
    if as_json:
        click.echo(json.dumps([{"workflow_id": v.workflow_id, "version": v.version, "active": v.active,
                                "created_at": _iso(v.created_at),
                                "steps": len(v.document.get("workflow", {}).get("steps", []))
                                if isinstance(v.document.get("workflow"), dict) else None}
                               for v in rows], indent=2))
        return
    for v in rows:
        click.echo(f"{'*' if v.active else ' '} v{v.version:<4} {_when(v.created_at)}"
                   + ("  active" if v.active else ""))


@main.command()
@click.argument("workflow")
@click.argument("version", type=click.IntRange(1, 2**62))
@_store_option
def activate(workflow: str, version: int, store: str) -> None:
    """Make VERSION of WORKFLOW the active one: what `legato start WORKFLOW` runs by default.
    Running instances keep the version they started with."""
    from ..storage import VersionNotFound

    engine = _read_engine(store)

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            try:
                await engine.storage.activate(workflow, version)
            except VersionNotFound as exc:
                raise _Refused(str(exc)) from None

    _trio_run(main_task)
    click.echo(f"{workflow} v{version} is active")
