"""Acting on instances from any shell: ``legato stop``, ``kill``, ``restart`` and ``legato step
stop|kill|skip|restart|bypass`` (the logic is :mod:`legato.actions`).

An action is recorded in the store and applied by the process that runs the instance (a
``legato worker``, or the ``legato run`` in another shell) within a tick; by default the command
waits until it is and prints the outcome. Exit 0 applied, 1 refused (or the store failed), 2 bad
input (an unknown instance or step, an ambiguous id prefix).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .group import EXIT_FAILED, EXIT_OK, _Refused, _trio_run, main
from .store import _engine, _opened, _require_store, _resolve_instance, _settings_option, _store_option

_no_wait = click.option("--no-wait", is_flag=True,
                        help="Only record the action and print its id; the process that runs the instance applies it.")
_json = click.option("--json", "as_json", is_flag=True, help="Print the action (and its outcome) as JSON.")


def _action_json(action) -> dict[str, Any]:
    from .output import _iso

    return {"id": action.id, "instance_id": action.instance_id, "verb": action.verb, "step_id": action.step_id,
            "params": action.params, "requested_by": action.requested_by,
            "requested_at": _iso(action.requested_at), "applied_at": _iso(action.applied_at),
            "outcome": action.outcome}


def _act(store: str, instance: str, verb: str, step: str | None, no_wait: bool, as_json: bool) -> None:
    """Request ``verb`` (on ``step``), wait for it unless ``no_wait``, print, exit."""
    from ..actions import ActionInvalid, request_action, requester, wait_applied

    engine = _engine(store)
    _require_store(engine, store)
    out: dict[str, Any] = {}

    async def main_task() -> None:
        storage = engine.storage
        async with _opened(storage, store):
            found = await _resolve_instance(storage, instance, store)
            try:
                action = await request_action(storage, found.instance_id, verb, step_id=step, by=requester("cli"))
            except ActionInvalid as exc:
                raise _Refused(str(exc)) from None
            if action.applied_at is None and not no_wait:
                lease = await storage.get_lease(found.instance_id)
                if lease is None or not lease.live:
                    click.echo(f"legato: nobody runs instance {found.instance_id} now (its worker is gone, or it "
                               "waits for one): the action is applied once a `legato worker` or `legato resume "
                               f"{found.instance_id}` takes it up; waiting (Ctrl-C leaves it recorded)", err=True)
                action = await wait_applied(storage, action.id, found.instance_id)
            out["action"] = action
            out["instance"] = await storage.get_instance(found.instance_id)

    _trio_run(main_task)
    action, record = out["action"], out["instance"]
    if as_json:
        click.echo(json.dumps({**_action_json(action), "instance_status": record.status.value}, indent=2))
    elif action.applied_at is None:
        click.echo(f"action {action.id} ({verb}{' ' + step if step else ''}) recorded for instance "
                   f"{record.instance_id}: the process that runs it applies it (`legato status "
                   f"{record.instance_id}` shows it)")
    else:
        click.echo(f"{verb}{' ' + step if step else ''} {record.instance_id}: {action.outcome} "
                   f"(instance {record.status.value})")
    sys.exit(EXIT_FAILED if action.outcome.startswith("refused") else EXIT_OK)


@main.command()
@click.argument("instance")
@_store_option
@_no_wait
@_json
def stop(instance: str, store: str, no_wait: bool, as_json: bool) -> None:
    """Stop INSTANCE wherever it runs: its running steps are cancelled, nothing new starts, it ends
    STOPPED (`legato restart` runs it again). INSTANCE is an id or a unique prefix of one.

    Applied by the process that runs it (a worker, a `legato run` in another shell); a queued
    instance is stopped at once. Waits until it is applied unless --no-wait.
    """
    _act(store, instance, "stop", None, no_wait, as_json)


@main.command()
@click.argument("instance")
@_store_option
@_no_wait
@_json
def kill(instance: str, store: str, no_wait: bool, as_json: bool) -> None:
    """Kill INSTANCE: like stop, but it ends FAILED."""
    _act(store, instance, "kill", None, no_wait, as_json)


@main.group()
def step() -> None:
    """Act on one step of an instance: stop, kill, skip, restart it, or bypass its signal dependencies."""


def _step_command(verb: str, doc: str):
    @step.command(name=verb, help=doc)
    @click.argument("instance")
    @click.argument("step_id", metavar="STEP")
    @_store_option
    @_no_wait
    @_json
    def command(instance: str, step_id: str, store: str, no_wait: bool, as_json: bool) -> None:
        _act(store, instance, verb, step_id, no_wait, as_json)

    return command


_step_command("stop", "Stop STEP of a running INSTANCE: it ends STOPPED (the other steps go on; the instance "
                      "ends STOPPED).")
_step_command("kill", "Kill STEP of a running INSTANCE: it ends FATALLY_FAILED and its failure mode applies "
                      "(IGNORE_FAILURE: COMPLETED_WITH_ERROR).")
_step_command("skip", "Skip STEP of a running INSTANCE (running or not started yet): it ends SKIPPED and the DAG "
                      "goes on as if it had completed.")
_step_command("bypass", "Let STEP of a running INSTANCE, WAITING_FOR_SIGNALS, go on without its signals "
                        "(Maestro's BYPASS_STEP_DEPENDENCIES).")


@step.command(name="restart")
@click.argument("instance")
@click.argument("step_id", metavar="STEP")
@_store_option
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="Where instances get their working directories [default: .legato/runs].")
@_settings_option
@_no_wait
@_json
def step_restart(instance: str, step_id: str, store: str, workspace: str | None, settings: str | None,
                 no_wait: bool, as_json: bool) -> None:
    """Restart STEP: in a running INSTANCE, a new attempt of a step that failed, was stopped or timed
    out; in an ended one, a new run from STEP (as `legato restart INSTANCE --from-step STEP`)."""
    engine = _engine(store, workspace, settings)
    _require_store(engine, store)
    found: dict[str, Any] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            found["instance"] = await _resolve_instance(engine.storage, instance, store)

    _trio_run(main_task)
    if found["instance"].status.terminal:  # exits
        _restart(engine, store, found["instance"].instance_id, step_id, False, no_wait, as_json)
    _act(store, found["instance"].instance_id, "restart", step_id, no_wait, as_json)


@main.command()
@click.argument("instance")
@click.option("--from-beginning", is_flag=True, help="Run every step again (Maestro's RESTART_FROM_BEGINNING).")
@click.option("--from-step", metavar="STEP", default=None,
              help="Run STEP and what follows it again; what precedes it is carried over (RESTART_FROM_SPECIFIC).")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Give a workflow param a new value for the new run (repeatable; MUTABLE and "
                   "MUTABLE_ON_START_RESTART params only), parsed by its type.")
@_store_option
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="Where instances get their working directories [default: .legato/runs].")
@_settings_option
@_no_wait
@click.option("--json", "as_json", is_flag=True, help="Print the final instance (with --no-wait: the action) as JSON.")
def restart(instance: str, from_beginning: bool, from_step: str | None, params: tuple[str, ...], store: str,
            workspace: str | None, settings: str | None, no_wait: bool, as_json: bool) -> None:
    """Run an ended INSTANCE again, as its next run, in the foreground (or, with --no-wait, queued
    for a `legato worker`).

    By default from its incomplete steps: steps that completed are carried over and never run
    again; those that failed, were stopped or timed out run again (as new attempts, with the params
    they were evaluated with), then what follows them. In a foreach, only the iterations that did
    not succeed run again. --from-beginning runs every step again; --from-step STEP runs STEP and
    what follows it (and any other incomplete step). Every run is kept. INSTANCE is an instance
    id or a unique prefix of one.
    """
    if from_beginning and from_step:
        from .group import _fail

        _fail("--from-beginning and --from-step exclude each other: pick one")
    from .running import _parse_params

    raw = _parse_params(params)
    engine = _engine(store, workspace, settings)
    _require_store(engine, store)
    _restart(engine, store, instance, from_step, from_beginning, no_wait, as_json, raw)


def _restart(engine, store: str, instance: str, from_step: str | None, from_beginning: bool, no_wait: bool,
             as_json: bool, raw: dict[str, str] | None = None) -> None:
    from ..actions import ActionInvalid, request_action, requester
    from ..definition import DefinitionError
    from ..storage import StorageError
    from ..view import PlainView
    from .running import _follow, _report
    from .store import _unloadable

    mode = ("RESTART_FROM_SPECIFIC" if from_step else "RESTART_FROM_BEGINNING" if from_beginning
            else "RESTART_FROM_INCOMPLETE")
    params = {"mode": mode, **({"step_id": from_step} if from_step else {}), **({"raw_params": raw} if raw else {})}
    outcome: dict[str, Any] = {}

    async def main_task() -> None:
        storage = engine.storage
        async with _opened(storage, store):
            found = await _resolve_instance(storage, instance, store)
            try:
                definition = await engine._pinned(found)
            except (DefinitionError, StorageError) as exc:
                raise _Refused(f"instance {found.instance_id} not restarted: {_unloadable(found, exc)}") from None
            try:
                action = await request_action(storage, found.instance_id, "restart", by=requester("cli"),
                                              params=params, engine=engine, queue=no_wait)
            except ActionInvalid as exc:
                raise _Refused(str(exc)) from None
            if no_wait:
                outcome["action"] = action
                outcome["instance"] = await storage.get_instance(found.instance_id)
                return
            view = PlainView(definition, quiet=as_json)
            outcome["view"] = view
            await _follow(engine, definition, found, view, outcome, resume=True)

    _trio_run(main_task)
    if no_wait:
        action, record = outcome["action"], outcome["instance"]
        if as_json:
            click.echo(json.dumps({**_action_json(action), "instance_status": record.status.value,
                                   "run_id": record.run_id}, indent=2))
        else:
            click.echo(f"{record.instance_id}\ninstance {record.instance_id} run {record.run_id} queued "
                       f"({mode}): a `legato worker` on this store runs it, or `legato resume {record.instance_id}`")
        sys.exit(EXIT_OK)
    sys.exit(_report(outcome["view"], outcome, as_json))
