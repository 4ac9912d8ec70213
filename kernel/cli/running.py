"""Running in the foreground: ``legato run``, ``start`` and ``resume`` (and ``restart``, in
:mod:`.acting`), with the live view, Ctrl-C handling, the actions other shells send, and the final
report."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .group import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    _Refused,
    _fail,
    main,
    _trio_run,
)
from .store import (
    _engine,
    _load_or_exit,
    _opened,
    _require_store,
    _resolve_instance,
    _settings_option,
    _store_option,
    _unloadable,
)
from .output import _instance_json


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail(f"-p expects name=value, got {pair!r}")
        out[name.strip()] = value
    return out


async def _follow(engine, definition, instance, view, outcome, *, resume: bool = False,
                  restart: bool = False) -> None:
    """Run (or resume) one instance in the foreground with Ctrl-C handling; fill ``outcome``."""
    import trio

    from ..actions import FOREGROUND_DELAY, ActionApplier

    storage = engine.storage
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_interrupt, engine, instance.instance_id, outcome, view)
        # `legato stop` and the like from other shells, heard from shortly after the run starts
        nursery.start_soon(ActionApplier(engine, delay=FOREGROUND_DELAY).run)
        async with view.open(nursery, storage, instance.instance_id, resume=resume or restart):
            if restart:
                final = await engine.restart(instance.instance_id, observer=view.on_event)
            elif resume:
                final = await engine.resume(instance.instance_id, observer=view.on_event)
            else:
                final = await engine.run(definition, instance, observer=view.on_event)
        outcome["instance"] = final
        outcome["attempts"] = await storage.get_attempts(final.instance_id)
        outcome["logs"] = await storage.get_logs(final.instance_id)
        nursery.cancel_scope.cancel()


def _exit_with_report(view, outcome: dict, as_json: bool) -> None:
    """The foreground run's report, a note on unfinished instances nobody runs, and its exit code."""
    code = _report(view, outcome, as_json)
    if outcome.get("orphans"):
        click.echo(f"note: {outcome['orphans']} unfinished instance(s) in the store have no live worker; "
                   "`legato resume` picks them up", err=True)
    sys.exit(code)


def _report(view, outcome: dict, as_json: bool) -> int:
    instance, attempts = outcome["instance"], outcome["attempts"]
    if as_json:
        steps = [s.id for s in view.definition.steps]
        click.echo(json.dumps(_instance_json(instance, attempts, steps), indent=2, default=str))
    else:
        view.summary(instance, attempts, outcome["logs"])
    if outcome.get("interrupted"):
        return EXIT_INTERRUPTED
    return EXIT_OK if instance.status.value == "SUCCEEDED" else EXIT_FAILED


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Set a workflow param (repeatable), parsed by its type; a map merges into the declared one; "
                   "an undeclared name adds a param typed from its value.")
@_store_option
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="Where instances get their working directories [default: .legato/runs].")
@click.option("--request-id", default=None,
              help="Idempotency key: the same id starts at most one instance (an unfinished one is resumed).")
@click.option("--no-wait", is_flag=True,
              help="Only create the instance (queued) and print its id: a `legato worker` runs it, or `legato resume ID`.")
@_settings_option
@click.option("--json", "as_json", is_flag=True, help="Print the final instance and steps as JSON.")
def run(file: str, params: tuple[str, ...], store: str, workspace: str | None, request_id: str | None,
        no_wait: bool, settings: str | None, as_json: bool) -> None:
    """Run a workflow in the foreground until it ends.

    Shows each step's state live on a terminal, plain lines otherwise. Ctrl-C stops the instance
    (running steps are cancelled and their processes killed) and exits 130. Every transition is
    kept in the store: `legato status`, `legato logs` read it afterwards.
    """
    overrides = _parse_params(params)
    engine = _engine(store, workspace, settings)
    definition = _load_or_exit(engine, file)
    _start_in_foreground(engine, store, definition, overrides, request_id, no_wait, as_json)


@main.command()
@click.argument("workflow")
@click.option("--version", "version_spec", default="active", show_default=True, metavar="active|latest|N",
              help="Which stored version to run: the active one, the newest, or a number.")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Set a workflow param (repeatable), as with `legato run`.")
@_store_option
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="Where instances get their working directories [default: .legato/runs].")
@click.option("--request-id", default=None,
              help="Idempotency key: the same id answers with the instance it started, never a second one.")
@click.option("--no-wait", is_flag=True,
              help="Only create the instance (queued) and print its id: a `legato worker` runs it, or `legato resume ID`.")
@_settings_option
@click.option("--json", "as_json", is_flag=True, help="Print the final instance and steps as JSON.")
def start(workflow: str, version_spec: str, params: tuple[str, ...], store: str, workspace: str | None,
          request_id: str | None, no_wait: bool, settings: str | None, as_json: bool) -> None:
    """Start an instance of a stored version of WORKFLOW (`legato push` stores them), pinned to it.

    Runs it in the foreground exactly like `legato run` (live view, exit codes, --json) unless
    --no-wait. A later push or activation never changes what the instance runs.
    """
    from ..storage import VersionNotFound, parse_version

    try:
        spec = parse_version(version_spec)
    except ValueError as exc:
        _fail(f"--version: {exc}")
    overrides = _parse_params(params)
    engine = _engine(store, workspace, settings)
    _require_store(engine, store)
    found: dict[str, Any] = {}

    async def read_version() -> None:
        async with _opened(engine.storage, store):
            try:
                found["version"] = await engine.storage.require_definition(workflow, spec)
            except VersionNotFound as exc:
                raise _Refused(str(exc)) from None

    _trio_run(read_version)
    stored = found["version"]
    definition = _load_or_exit(engine, stored.document)
    definition.version = stored.version  # pinned: started without pushing anything
    _start_in_foreground(engine, store, definition, overrides, request_id, no_wait, as_json)


def _start_in_foreground(engine, store: str, definition, overrides: dict[str, str], request_id: str | None,
                         no_wait: bool, as_json: bool) -> None:
    """What `run` and `start` do once they have the definition: start the instance, run it in the
    foreground (or, with ``no_wait``, only queue it), report, exit."""
    from ..engine import StartError
    from ..strategy import wait_turn, why_waiting
    from ..view import make_view

    view = make_view(definition, plain=as_json or not sys.stdout.isatty(), quiet=as_json)
    outcome: dict[str, Any] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            try:
                instance, created = await engine.start(definition, raw_params=overrides, request_id=request_id,
                                                       queued=no_wait)
            except StartError as exc:
                outcome["invalid"] = str(exc)
                return
            if created and instance.status.terminal:  # its run strategy stopped it at once (FIRST_ONLY)
                outcome["existing"], outcome["left"] = instance, True
                return
            if instance.queued and no_wait:
                outcome["waiting"] = await why_waiting(engine.storage, instance)
            if await _not_followed(engine, instance, created, no_wait, outcome):
                return
            if instance.queued:  # its run strategy makes it wait: say why, run it when its turn comes
                instance, mine = await wait_turn(engine, instance, say=lambda why: click.echo(
                    f"legato: instance {instance.instance_id} waits: {why}", err=True))
                if not mine:  # ended meanwhile (stopped by its run strategy), or taken by a worker
                    instance = await _until_ended(engine, instance)
                    outcome["existing"], outcome["left"] = instance, True
                    outcome["attempts"] = await engine.storage.get_attempts(instance.instance_id)
                    return
                created = True
            await _follow(engine, definition, instance, view, outcome, resume=not created)
            outcome["orphans"] = len(await engine.storage.list_resumable())

    _trio_run(main_task)
    if "invalid" in outcome:
        _fail(outcome["invalid"])
    _exit_if_not_followed(outcome, request_id, as_json)
    _exit_with_report(view, outcome, as_json)


async def _until_ended(engine, instance):
    """The final record of an instance a worker took while this process waited for its turn."""
    import trio

    if not instance.status.terminal:
        click.echo(f"legato: instance {instance.instance_id} is run by a worker; waiting here for its end", err=True)
    while not instance.status.terminal:
        await trio.sleep(0.2)
        instance = await engine.storage.get_instance(instance.instance_id) or instance
    return instance


async def _not_followed(engine, instance, created: bool, no_wait: bool, outcome: dict) -> bool:
    """Whether run/start ends without running the instance here: it was only queued
    (``--no-wait``), or its request id names an instance already there that ended (or that
    ``--no-wait`` leaves queued). An unfinished one named by its request id is resumed here."""
    if created:
        if not no_wait:
            return False
        outcome["queued"] = instance
        return True
    if not (no_wait or instance.status.terminal):
        return False
    outcome["existing"] = instance
    outcome["attempts"] = await engine.storage.get_attempts(instance.instance_id)
    return True


def _exit_if_not_followed(outcome: dict, request_id: str | None, as_json: bool) -> None:
    """What run/start say of an instance they did not run (see :func:`_not_followed`), and exit."""
    for key in ("queued", "existing"):
        inst = outcome.get(key)
        if inst is None:
            continue
        if as_json:
            click.echo(json.dumps(_instance_json(inst, outcome.get("attempts", [])), indent=2, default=str))
        elif key == "queued":
            click.echo(f"{inst.instance_id}\n{inst.workflow_id} v{inst.version}: instance {inst.instance_id} created "
                       f"(queued): a `legato worker` on this store runs it, or `legato resume {inst.instance_id}`")
            if outcome.get("waiting"):
                click.echo(f"it waits: {outcome['waiting']}")
        elif outcome.get("left"):  # its run strategy ended it before it ran here, or a worker runs it
            click.echo(f"instance {inst.instance_id} ({inst.workflow_id} v{inst.version}): {inst.status.value}"
                       + (f": {inst.message}" if inst.message else ""))
        else:
            click.echo(f"request id {request_id!r} already started instance {inst.instance_id} "
                       f"({inst.workflow_id} v{inst.version}): {inst.status.value}")
        if key == "queued" or not inst.status.terminal:
            sys.exit(EXIT_OK)
        sys.exit(EXIT_OK if inst.status.value == "SUCCEEDED" else EXIT_FAILED)


@main.command()
@click.argument("instance", required=False)
@_store_option
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="Where instances get their working directories [default: .legato/runs].")
@_settings_option
@click.option("--json", "as_json", is_flag=True, help="Print the final instances as JSON.")
def resume(instance: str | None, store: str, workspace: str | None, settings: str | None, as_json: bool) -> None:
    """Resume INSTANCE, or every unfinished instance whose worker is gone (its lease expired, or
    its process died on this machine); list those that live workers still hold.

    Steps that finished are not run again; a step that was running is reattached when its step
    type can (else it fails as a platform error and its retry policy decides).
    """
    from ..definition import DefinitionError
    from ..engine import LeaseHeld
    from ..storage import StorageError
    from ..view import PlainView

    engine = _engine(store, workspace, settings)
    if not engine.storage.exists():  # nothing to resume; do not create a store to say so
        if instance is None:
            click.echo("nothing to resume")
            sys.exit(EXIT_OK)
        _require_store(engine, store)
    results: list[dict[str, Any]] = []
    held: list[Any] = []
    unloadable: list[str] = []

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            if not instance:
                held.extend(await engine.storage.list_leased())
            if instance is not None:
                found = await _resolve_instance(engine.storage, instance, store)
                if found.status.terminal:
                    raise _Refused(_ended(found))
                todo = [found]
            else:
                todo = await engine.storage.list_resumable()
            seen: set[str] = set()
            while True:
                if not todo and instance is None and seen:  # what ended may let queued ones start now
                    todo = [r for r in await engine.storage.list_resumable() if r.instance_id not in seen]
                if not todo:
                    break
                record = todo.pop(0)
                seen.add(record.instance_id)
                version = await engine.storage.get_definition(record.workflow_id, record.version)
                try:
                    if version is None:
                        raise StorageError(f"its definition {record.workflow_id} v{record.version} is missing "
                                           "from the store")
                    definition = engine.load(version.document)
                except (DefinitionError, StorageError) as exc:
                    # Left as it is (nothing is written): the stored version no longer loads here,
                    # e.g. a step type that is not installed or a rule that has grown stricter.
                    unloadable.append(f"instance {record.instance_id} not resumed: {_unloadable(record, exc)}")
                    continue
                view = PlainView(definition, quiet=as_json)
                outcome: dict[str, Any] = {"view": view}
                try:
                    await _follow(engine, definition, record, view, outcome, resume=True)
                except* LeaseHeld:
                    if instance:
                        raise
                    # Taken by another worker since the list was read: it is that worker's now.
                    outcome["held"] = await engine.storage.get_lease(record.instance_id)
                if "held" in outcome:
                    if outcome["held"] is not None:
                        held.append((record, outcome["held"]))
                    continue
                results.append(outcome)
                if outcome.get("interrupted"):
                    return

    _trio_run(main_task)
    codes = [_report(r["view"], r, as_json) for r in results]
    if held:
        # Not "nothing": say what is unfinished and who holds it (a dead worker on this machine
        # frees its lease at once, so these are alive, or on another machine until expiry).
        click.echo(f"{len(held)} unfinished instance(s) are held by live workers"
                   f"{'' if results else ', nothing to resume now'}:", err=bool(results) or as_json)
        for record, lease in held:
            click.echo(f"  {record.instance_id}  {record.workflow_id:<24} held by {lease.describe()}, "
                       f"lease expires in {max(0.0, lease.expires_in or 0.0):.1f}s unless renewed",
                       err=bool(results) or as_json)
    elif not results and not unloadable:
        click.echo("nothing to resume")
    for message in unloadable:
        click.echo(f"legato: {message}", err=True)
    sys.exit(max(codes + [EXIT_INVALID] * bool(unloadable), default=EXIT_OK))


def _ended(record) -> str:
    """Why ``legato resume`` refuses an instance that has ended, and what to do instead."""
    head = f"instance {record.instance_id} ({record.workflow_id}) already ended {record.status.value}"
    if record.status.value == "SUCCEEDED":
        return f"{head}: nothing to resume"
    return (f"{head}; resume continues only unfinished instances: `legato restart {record.instance_id}` runs it "
            "again from its incomplete steps")


async def _interrupt(engine, instance_id: str, outcome: dict, view) -> None:
    """Ctrl-C (or SIGTERM) stops the instance cleanly; a second one kills it."""
    import signal

    import trio

    from ..view import STOPPING

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            outcome["interrupted"] = True
            run = engine.runs.get(instance_id)
            if run is None:
                continue
            if outcome.get("stopping"):
                run.kill("killed by a second interrupt")
            else:
                outcome["stopping"] = True
                view.note(STOPPING)  # above the live table, or on stderr
                run.stop("interrupted")
