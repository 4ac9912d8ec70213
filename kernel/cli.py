"""The ``legato`` command line (DESIGN §8).

Exit codes: 0 succeeded, 1 the workflow failed / was stopped / timed out, 2 invalid input (a bad
definition, param or option), 130 interrupted.  Errors are printed for people, never as a
traceback.  Heavy modules (trio, cel-python, pydantic) are imported inside the commands so that
``legato --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def _fail(message: str, code: int = EXIT_INVALID) -> None:
    click.echo(f"legato: {message}", err=True)
    sys.exit(code)


def _plugins():
    from .plugin_manager import PluginError, get_plugins

    try:
        return get_plugins()
    except PluginError as exc:
        _fail(str(exc))


def _print_problems(exc) -> None:
    source = exc.source or "definition"
    click.echo(f"{source}: {len(exc.problems)} problem(s) found", err=True)
    for problem in exc.problems:
        click.echo(f"  {problem}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="legato", prog_name="legato")
def main() -> None:
    """Legato: workflows of steps (bash, docker, notebooks, SQL, …) with Maestro's semantics.

    Run a workflow in the foreground:  legato run examples/etl.json
    """


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def validate(file: str, as_json: bool) -> None:
    """Check a definition (JSON or YAML) and report every problem, located by JSON pointer."""
    from .cel import CelCompiler
    from .definition import DefinitionError, load_definition

    plugins = _plugins()
    try:
        definition = load_definition(file, plugins.step_types.types, CelCompiler(plugins.cel_functions.functions))
    except DefinitionError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "problems": [
                {"pointer": p.pointer, "message": p.message} for p in exc.problems]}, indent=2))
        else:
            _print_problems(exc)
        sys.exit(EXIT_INVALID)
    if as_json:
        click.echo(json.dumps({"valid": True, "workflow": definition.workflow_id, "steps": len(definition.steps)}))
    else:
        click.echo(f"{file}: valid ({definition.workflow_id}, {len(definition.steps)} steps)")


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail(f"-p expects name=value, got {pair!r}")
        out[name.strip()] = value
    return out


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Override a workflow param (repeatable). Values are parsed by the param's type.")
@click.option("--store", envvar="LEGATO_STORE", default="memory://", show_default=True,
              help="Storage URL (also LEGATO_STORE).")
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="Where instances get their working directories [default: .legato/runs].")
@click.option("--request-id", default=None, help="Idempotency key: the same id starts at most one instance.")
@click.option("--json", "as_json", is_flag=True, help="Print the final instance and steps as JSON.")
def run(file: str, params: tuple[str, ...], store: str, workspace: str | None, request_id: str | None,
        as_json: bool) -> None:
    """Run a workflow in the foreground until it ends.

    Shows each step's state live on a terminal, plain lines otherwise. Ctrl-C stops the instance
    (running steps are cancelled and their processes killed) and exits 130.
    """
    import trio

    from .definition import DefinitionError
    from .engine import Engine, StartError
    from .storage import StorageError, open_storage
    from .view import make_view

    plugins = _plugins()
    overrides = _parse_params(params)
    try:
        storage = open_storage(store, plugins)
    except StorageError as exc:
        _fail(str(exc))
    engine = Engine(storage, plugins=plugins, workspace=workspace)
    try:
        definition = engine.load(file)
    except DefinitionError as exc:
        _print_problems(exc)
        sys.exit(EXIT_INVALID)

    view = make_view(definition, plain=as_json or not sys.stdout.isatty(), quiet=as_json)
    outcome: dict[str, Any] = {}

    async def main_task() -> None:
        async with storage:
            try:
                instance, created = await engine.start(definition, raw_params=overrides, request_id=request_id)
            except StartError as exc:
                outcome["invalid"] = str(exc)
                return
            if not created:
                outcome["existing"] = instance
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_interrupt, engine, instance.instance_id, outcome)
                async with view.open(nursery):
                    final = await engine.run(definition, instance, observer=view.on_event)
                outcome["instance"] = final
                outcome["attempts"] = await storage.get_attempts(final.instance_id)
                outcome["logs"] = await storage.get_logs(final.instance_id)
                nursery.cancel_scope.cancel()

    try:
        trio.run(main_task)
    except StorageError as exc:
        _fail(str(exc), EXIT_FAILED)
    except Exception as exc:  # a bug in Legato or a plugin: say so plainly, keep the details
        _internal_error(exc)
    if "invalid" in outcome:
        _fail(outcome["invalid"])
    if "existing" in outcome:
        inst = outcome["existing"]
        click.echo(f"request id {request_id!r} already started instance {inst.instance_id} ({inst.status.value})")
        sys.exit(EXIT_OK)
    instance = outcome["instance"]
    attempts = outcome["attempts"]
    if as_json:
        click.echo(json.dumps(_instance_json(instance, attempts), indent=2, default=str))
    else:
        view.summary(instance, attempts, outcome["logs"])
    if outcome.get("interrupted"):
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_OK if instance.status.value == "SUCCEEDED" else EXIT_FAILED)


def _internal_error(exc: BaseException) -> None:
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="legato-crash-", suffix=".txt", delete=False) as f:
        traceback.print_exception(exc, file=f)
    _fail(f"internal error ({type(exc).__name__}: {exc}); this is a bug in Legato or a plugin. "
          f"Details: {f.name}", EXIT_FAILED)


async def _interrupt(engine, instance_id: str, outcome: dict) -> None:
    """Ctrl-C (or SIGTERM) stops the instance cleanly; a second one kills it."""
    import signal

    import trio

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
                click.echo("\ninterrupted: stopping the instance (Ctrl-C again to kill)", err=True)
                run.stop("interrupted")


def _instance_json(instance, attempts) -> dict[str, Any]:
    steps: dict[str, Any] = {}
    for a in attempts:
        steps[a.step_id] = {
            "status": a.status.value, "attempt": a.attempt, "outputs": a.outputs, "message": a.message,
            "started_at": a.started_at, "ended_at": a.ended_at,
        }
    return {
        "instance_id": instance.instance_id, "workflow_id": instance.workflow_id, "version": instance.version,
        "status": instance.status.value, "message": instance.message, "params": instance.params,
        "started_at": instance.started_at, "ended_at": instance.ended_at, "steps": steps,
    }


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins: what each provides, its distribution and version, and whether it can run here."""
    rows = _plugins().infos()
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("name", "kind", "plugin", "distribution", "version", "status"):
        table.add_column(column)
    for row in rows:
        status = "available" if row.unavailable is None else f"unavailable: {row.unavailable}"
        table.add_row(row.name, row.kind, row.plugin, row.distribution, row.version, status)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
