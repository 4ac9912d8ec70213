"""Run strategies from the command line: ``legato unblock`` (the rules are :mod:`legato.strategy`)."""

from __future__ import annotations

import json
from typing import Any

import click

from .group import _Refused, main, _trio_run
from .store import _opened, _read_engine, _store_option


def _who() -> str:
    """Who acts, for the timeline: ``LEGATO_USER`` or the login name, and from where."""
    import getpass
    import os

    try:
        user = os.environ.get("LEGATO_USER") or getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = f"uid {os.getuid()}"
    return f"{user} via cli"


@main.command()
@click.argument("workflow")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the unblocked instances as JSON.")
def unblock(workflow: str, store: str, as_json: bool) -> None:
    """Let WORKFLOW's STRICT_SEQUENTIAL queue go on past its failed instances.

    Under STRICT_SEQUENTIAL an instance that ends FAILED holds the queue until it is restarted
    (`legato restart INSTANCE`) or the workflow is unblocked: each failed instance is marked
    unblocked, with who and when in its timeline (`legato status`), and the queued instances start
    in their order. A later failed run blocks the queue again.
    """
    from ..storage import VersionNotFound
    from ..strategy import unblock as unblock_workflow

    engine = _read_engine(store)
    found: dict[str, Any] = {}
    by = _who()

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            try:
                found["ids"] = await unblock_workflow(engine.storage, workflow, by=by)
            except VersionNotFound as exc:
                raise _Refused(str(exc)) from None

    _trio_run(main_task)
    ids = found["ids"]
    if as_json:
        click.echo(json.dumps({"workflow_id": workflow, "unblocked": ids, "by": by}))
    elif ids:
        click.echo(f"{workflow}: unblocked {len(ids)} failed instance(s) ({', '.join(ids)}); its queue goes on")
    else:
        click.echo(f"{workflow}: no failed instance holds its queue; nothing to unblock")
