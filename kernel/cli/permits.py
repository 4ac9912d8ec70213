"""Tag permits: ``legato permits set TAG N``, ``list`` and ``unset`` (Maestro's TagPermitController).

A tag's limit caps the steps carrying that tag that run at once, in every workflow and instance
of the store; it wins over the ``permit`` a step's tag declares (:mod:`legato.permits`).
"""

from __future__ import annotations

import getpass
import json
import os

import click

from ..limits import MAX_CONCURRENCY
from .group import _Refused, _trio_run, main
from .output import _iso, _when
from .store import _engine, _opened, _read_engine, _store_option


def _who() -> str:
    """Who sets a limit, for the record: $LEGATO_USER, else the login name."""
    try:
        return os.environ.get("LEGATO_USER") or getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return f"uid {os.getuid()}"


@main.group()
def permits() -> None:
    """Tag permits: how many steps carrying a tag may run at once, across every workflow.

    A step carries a tag with its `tags` field; a tag's `permit` there is used until a limit is
    set here. Waiting steps show WAITING_FOR_PERMITS and why in `legato status`.
    """


@permits.command(name="set")
@click.argument("tag")
@click.argument("limit", type=click.IntRange(0, MAX_CONCURRENCY))
@_store_option
def set_permit(tag: str, limit: int, store: str) -> None:
    """Let at most LIMIT steps carrying TAG run at once (0 holds them all back)."""
    if not tag.strip():
        raise click.BadParameter("a tag name is not empty", param_hint="TAG")
    engine = _engine(store)

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            await engine.storage.set_tag_permit(tag, limit, by=_who())

    _trio_run(main_task)
    click.echo(f"tag {tag}: at most {limit} step(s) at once")


@permits.command(name="list")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_permits(store: str, as_json: bool) -> None:
    """List the tag limits set, with how many steps hold each now."""
    engine = _read_engine(store)
    rows: list = []

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            rows.extend(await engine.storage.get_tag_permits())

    _trio_run(main_task)
    if as_json:
        click.echo(json.dumps([{**row, "set_at": _iso(row["set_at"])} for row in rows], indent=2))
        return
    if not rows:
        click.echo("no tag permits set (`legato permits set TAG N` sets one)")
        return
    width = max(len(row["tag"]) for row in rows)
    for row in rows:
        click.echo(f"{row['tag']:<{width}}  {row['held']}/{row['limit']} held  set by {row['set_by']} "
                   f"{_when(row['set_at'])}")


@permits.command(name="unset")
@click.argument("tag")
@_store_option
def unset_permit(tag: str, store: str) -> None:
    """Remove TAG's limit: its steps fall back to their tag's own permit, if any."""
    engine = _read_engine(store)

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            if not await engine.storage.delete_tag_permit(tag):
                raise _Refused(f"no permit is set for tag {tag!r}: `legato permits list` lists them")

    _trio_run(main_task)
    click.echo(f"tag {tag}: no limit set")
