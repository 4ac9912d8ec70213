"""Signals: ``legato signal send NAME -p k=v [--request-id ID]`` and ``legato signal get NAME
[--seq N]`` (Maestro's SignalController: POST /signals, GET the latest or a given instance).

A sent signal is stored with the next number of its name; steps waiting on it
(``signal_dependencies``) and signal triggers of the store wake up (:mod:`legato.signals`).
"""

from __future__ import annotations

import json

import click

from .group import _Refused, _fail, _trio_run, main
from .output import _when
from .store import _engine, _opened, _read_engine, _store_option


@main.group()
def signal() -> None:
    """Send and read signals: named events with params that steps wait on and that start workflows.

    A step waits with `signal_dependencies` (WAITING_FOR_SIGNALS in `legato status`); a step
    announces one with `signal_outputs`; a workflow starts on them with `signal_triggers`.
    """


def _show(record, created: bool | None, as_json: bool) -> None:
    from ..signals import signal_json

    if as_json:
        click.echo(json.dumps(signal_json(record, created), indent=2))
        return
    params = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and not v.isprintable() else v}"
                      for k, v in record.params.items())
    head = f"signal {record.name} #{record.seq}"
    if created is False:
        head += f" (already sent with request id {record.request_id}: nothing new stored)"
    click.echo(f"{head}  {_when(record.created_at)}" + (f"  {params}" if params else ""))


@signal.command(name="send")
@click.argument("name")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A signal param (repeatable). A whole number is sent as a number, anything else as a "
                   "string; quote digits as JSON (-p 'id=\"007\"') to send them as a string.")
@click.option("--request-id", default=None, metavar="ID",
              help="Make the send idempotent: the same id for the same name again stores nothing.")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the stored signal as JSON.")
def send(name: str, params: tuple[str, ...], request_id: str | None, store: str, as_json: bool) -> None:
    """Send signal NAME: steps waiting on it and signal triggers go on."""
    from ..signals import SignalError, check_signal, parse_cli_params

    try:
        name, values = check_signal(name, parse_cli_params(params))
    except SignalError as exc:
        _fail(f"signal send: {exc}")
    if request_id is not None and not request_id.strip():
        _fail("signal send: --request-id is not empty")
    engine = _engine(store)
    out: list = []

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            out.extend(await engine.storage.send_signal(name, values, request_id))

    _trio_run(main_task)
    _show(out[0], out[1], as_json)


@signal.command(name="get")
@click.argument("name")
@click.option("--seq", type=click.IntRange(1), default=None, help="The signal's number (default: the latest).")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def get(name: str, seq: int | None, store: str, as_json: bool) -> None:
    """Show the latest signal NAME (or number --seq)."""
    engine = _read_engine(store)
    out: list = []

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            record = await engine.storage.get_signal(name, seq)
            if record is None:
                latest = await engine.storage.get_signal(name) if seq is not None else None
                raise _Refused(f"no signal {name!r} was sent to this store" if latest is None and seq is None
                               else f"signal {name!r} has no #{seq}" + (f"; the latest is #{latest.seq}"
                                                                        if latest else ""))
            out.append(record)

    _trio_run(main_task)
    _show(out[0], None, as_json)
