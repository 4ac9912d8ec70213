"""The ``legato`` command line (DESIGN §8).

Exit codes: 0 succeeded, 1 the workflow failed / was stopped / timed out (or the store failed),
2 invalid input (a bad definition, param, option or store URL), 130 interrupted.  Errors are
printed for people, never as a traceback.  Heavy modules (trio, cel-python, pydantic) are imported
inside the commands so that ``legato --help`` stays fast.
"""

from __future__ import annotations

import gc
import json
import math
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


def _print_warnings(definition) -> None:
    """Fields the definition sets that are accepted but not enforced yet, on stderr (issue 9:
    nothing a definition says is validated and then silently ignored)."""
    source = definition.source or "definition"
    for warning in definition.warnings:
        click.echo(f"{source}: warning: {warning}", err=True)


class _Commands(click.Group):
    """The built-in commands plus those installed packages add through the ``legato.commands``
    entry-point group (``legato conformance`` comes from ``legato.conformance`` that way)."""

    def _installed(self) -> dict:
        import importlib.metadata

        return {ep.name: ep for ep in importlib.metadata.entry_points(group="legato.commands")}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._installed()))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None:
            ep = self._installed().get(name)
            if ep is not None:
                _resume_gc()  # another package's command: it may run for long
                command = ep.load()
        return command

    def main(self, *args, **kwargs):
        # A command's imports (trio, pydantic, the plugins) allocate some 10^5 objects that all
        # live on: collecting garbage during them is ~6 % of a short `legato run`. Collection
        # resumes once trio runs the command's work (_trio_run), and in any case on return.
        global _gc_paused
        if gc.isenabled():
            gc.disable()
            _gc_paused = True
        try:
            return super().main(*args, **kwargs)
        finally:
            _resume_gc()
            if not args and kwargs.get("args") is None:
                # The `legato` program itself (its arguments from sys.argv): the interpreter exits
                # next, and its collections over every object at exit cost ~50 ms of a short run.
                # Frozen objects are skipped; their memory goes back with the process.
                gc.freeze()


_gc_paused = False


def _resume_gc() -> None:
    """Collect garbage again if :meth:`_Commands.main` paused it."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.enable()


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
    nested = len(definition.all_by_id) - len(definition.steps)
    if as_json:
        click.echo(json.dumps({"valid": True, "workflow": definition.workflow_id, "steps": len(definition.steps),
                               "steps_in_loops": nested,
                               "warnings": [{"pointer": w.pointer, "message": w.message}
                                            for w in definition.warnings]}))
    else:
        _print_warnings(definition)
        inside = f", {nested} more in loop bodies" if nested else ""
        click.echo(f"{file}: valid ({definition.workflow_id}, {len(definition.steps)} steps{inside})")


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail(f"-p expects name=value, got {pair!r}")
        out[name.strip()] = value
    return out


DEFAULT_STORE = "sqlite:///.legato/legato.db"
INSTANCE_STATES = ("CREATED", "IN_PROGRESS", "PAUSED", "SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT")  # legato.states, unimported
_store_option = click.option(
    "--store", envvar="LEGATO_STORE", default=DEFAULT_STORE, show_default=True,
    help="Storage URL (also LEGATO_STORE): sqlite:///path.db, postgresql://…, memory://. A URL that "
         "cannot work (unknown scheme; a store that is not there, for a read) is exit 2; a store that "
         "fails behind a well-formed URL (permissions, a corrupt file, a server down) is exit 1.")


_settings_option = click.option(
    "--settings", type=click.Path(dir_okay=False), envvar="LEGATO_SETTINGS", default=None,
    help="A JSON or YAML file of operator settings per step type, e.g. {docker: {allowed_mounts: [/data]}} "
         "(also LEGATO_SETTINGS). Workflows cannot change these.")


def _load_settings(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as exc:
        _fail(f"cannot read settings {path}: {exc.strerror or exc}")
    from . import yaml12

    try:
        settings = yaml12.load(text)  # YAML 1.2 is a superset of JSON
    except yaml12.YamlError as exc:
        _fail(f"settings {path} is not valid JSON or YAML: {exc.located()}")
    if settings is None:
        return None  # an empty file: no settings
    from .steptype import SettingsError, validate_step_settings

    try:
        return validate_step_settings(_plugins().step_types.types, settings)
    except SettingsError as exc:
        for key, message in exc.problems:
            click.echo(f"legato: settings {path}: {key + ': ' if key else ''}{message}", err=True)
        sys.exit(EXIT_INVALID)


def _engine(store: str, workspace: str | None = None, settings: str | None = None):
    from .engine import Engine
    from .storage import StorageError, open_storage

    plugins = _plugins()
    step_settings = _load_settings(settings)
    if workspace is not None:
        try:
            os.makedirs(workspace, exist_ok=True)
        except (OSError, ValueError) as exc:  # a file on the way, no permission, a NUL byte
            _fail(f"--workspace {workspace!r:.200}: cannot make the directory ({getattr(exc, 'strerror', None) or exc})")
    try:
        storage = open_storage(store, plugins)
    except StorageError as exc:
        _fail(str(exc))
    return Engine(storage, plugins=plugins, workspace=workspace, lease_ttl=_lease_ttl(), step_settings=step_settings)


STORE_FORMS = "sqlite:///path/to/file.db, postgresql://user@host/db or memory://"


class _Refused(Exception):
    """Raised inside a command's trio task for input that names nothing usable: exit 2, the message."""


def _read_engine(store: str):
    """The engine of a read-only command: a store that does not exist is refused, never created."""
    engine = _engine(store)
    _require_store(engine, store)
    return engine


def _require_store(engine, store: str) -> None:
    """Exit 2, saying so, when the store ``engine`` would open does not exist yet."""
    if not engine.storage.exists():
        where = getattr(engine.storage, "path", None) or store
        _fail(f"no Legato store at {where} (nothing has run here yet; use --store URL or LEGATO_STORE "
              "to read another store)")


class _opened:
    """``async with _opened(storage, url)``: open the store, or say which URL failed and how to fix it
    (a StorageError: exit 1, like any store that stops working)."""

    def __init__(self, storage, url: str) -> None:
        self.storage, self.url = storage, url

    async def __aenter__(self):
        from .storage import StorageError

        try:
            await self.storage.open()
        except StorageError as exc:  # exit 1 as before: the URL is well-formed, the store behind it is not usable
            text = str(exc)
            hint = "" if "--store" in text else f". Check --store (or LEGATO_STORE): it takes {STORE_FORMS}"
            raise StorageError(f"cannot open the store {self.url}: {text}{hint}") from None
        return self.storage

    async def __aexit__(self, *exc) -> None:
        await self.storage.aclose()


AMBIGUOUS_SHOWN = 10  # candidates listed for an ambiguous instance id prefix


async def _resolve_instance(storage, given: str, store: str):
    """The instance ``given`` names: its id, or a unique prefix of it. Anything else is refused
    (exit 2) with the same message from every command, listing the candidates of an ambiguous prefix."""
    record = await storage.get_instance(given) if given else None
    if record is not None:
        return record
    found = await storage.find_instances(given, AMBIGUOUS_SHOWN + 1) if given else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise _Refused(f"no instance {given!r} in {store}: `legato list` shows the instances there")
    lines = [f"  {r.instance_id}  {r.workflow_id:<24} {r.status.value}" for r in found[:AMBIGUOUS_SHOWN]]
    more = "\n  …and more" if len(found) > AMBIGUOUS_SHOWN else ""
    raise _Refused(f"instance id {given!r} is ambiguous in {store}: it starts "
                   f"{'more than ' if more else ''}{min(len(found), AMBIGUOUS_SHOWN)} instances; "
                   "give more of the id:\n" + "\n".join(lines) + more)


LEASE_TTL_RANGE = (0.1, 86400.0)  # seconds: renewed every third of it, so not shorter; a day at most


def _lease_ttl() -> float:
    """LEGATO_LEASE_TTL, checked: a finite number of seconds within LEASE_TTL_RANGE."""
    text = os.environ.get("LEGATO_LEASE_TTL", "30")
    low, high = LEASE_TTL_RANGE
    try:
        ttl = float(text)
    except ValueError:
        ttl = math.nan
    if not low <= ttl <= high:  # NaN too
        _fail(f"LEGATO_LEASE_TTL must be a number of seconds from {low:g} to {high:g} (default 30), got {text!r:.40}")
    return ttl


def _trio_run(fn) -> None:
    """Run ``fn`` under trio; storage errors, a start the engine refuses (a secret it cannot
    resolve on resume) and Legato bugs become messages, not tracebacks."""
    import trio

    from .engine import StartError
    from .storage import StorageError

    _resume_gc()
    try:
        try:
            trio.run(fn)
        except BaseExceptionGroup as group:  # the CLI's own nurseries: show what happened, not the group
            leaf = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf from None
    except _Refused as exc:
        _fail(str(exc))
    except StorageError as exc:
        _fail(str(exc), EXIT_FAILED)
    except StartError as exc:
        _fail(str(exc))
    except Exception as exc:  # a bug in Legato or a plugin: say so plainly, keep the details
        _internal_error(exc)


async def _follow(engine, definition, instance, view, outcome, *, resume: bool = False,
                  restart: bool = False) -> None:
    """Run (or resume) one instance in the foreground with Ctrl-C handling; fill ``outcome``."""
    import trio

    storage = engine.storage
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_interrupt, engine, instance.instance_id, outcome, view)
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
@_settings_option
@click.option("--json", "as_json", is_flag=True, help="Print the final instance and steps as JSON.")
def run(file: str, params: tuple[str, ...], store: str, workspace: str | None, request_id: str | None,
        settings: str | None, as_json: bool) -> None:
    """Run a workflow in the foreground until it ends.

    Shows each step's state live on a terminal, plain lines otherwise. Ctrl-C stops the instance
    (running steps are cancelled and their processes killed) and exits 130. Every transition is
    kept in the store: `legato status`, `legato logs` read it afterwards.
    """
    from .definition import DefinitionError
    from .engine import StartError
    from .view import make_view

    overrides = _parse_params(params)
    engine = _engine(store, workspace, settings)
    try:
        definition = engine.load(file)
    except DefinitionError as exc:
        _print_problems(exc)
        sys.exit(EXIT_INVALID)
    _print_warnings(definition)

    view = make_view(definition, plain=as_json or not sys.stdout.isatty(), quiet=as_json)
    outcome: dict[str, Any] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            try:
                instance, created = await engine.start(definition, raw_params=overrides, request_id=request_id)
            except StartError as exc:
                outcome["invalid"] = str(exc)
                return
            if not created and instance.status.terminal:
                outcome["existing"] = instance
                return
            await _follow(engine, definition, instance, view, outcome, resume=not created)
            outcome["orphans"] = len(await engine.storage.list_resumable())

    _trio_run(main_task)
    if "invalid" in outcome:
        _fail(outcome["invalid"])
    if "existing" in outcome:
        inst = outcome["existing"]
        click.echo(f"request id {request_id!r} already ran instance {inst.instance_id}: {inst.status.value}")
        sys.exit(EXIT_OK if inst.status.value == "SUCCEEDED" else EXIT_FAILED)
    code = _report(view, outcome, as_json)
    if outcome.get("orphans"):
        click.echo(f"note: {outcome['orphans']} unfinished instance(s) in the store have no live worker; "
                   "`legato resume` picks them up", err=True)
    sys.exit(code)


def _load_or_exit(engine, source):
    """The definition ``source`` (a file or a stored document) loaded and validated, or its
    problems printed and exit 2."""
    from .definition import DefinitionError

    try:
        definition = engine.load(source)
    except DefinitionError as exc:
        _print_problems(exc)
        sys.exit(EXIT_INVALID)
    _print_warnings(definition)
    return definition


def _when(ts: float) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(ts))


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
    from .storage import VersionNotFound

    engine = _read_engine(store)

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            try:
                await engine.storage.activate(workflow, version)
            except VersionNotFound as exc:
                raise _Refused(str(exc)) from None

    _trio_run(main_task)
    click.echo(f"{workflow} v{version} is active")


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
              help="Only create the instance (queued, no worker) and print its id; `legato resume ID` runs it.")
@_settings_option
@click.option("--json", "as_json", is_flag=True, help="Print the final instance and steps as JSON.")
def start(workflow: str, version_spec: str, params: tuple[str, ...], store: str, workspace: str | None,
          request_id: str | None, no_wait: bool, settings: str | None, as_json: bool) -> None:
    """Start an instance of a stored version of WORKFLOW (`legato push` stores them), pinned to it.

    Runs it in the foreground exactly like `legato run` (live view, exit codes, --json) unless
    --no-wait. A later push or activation never changes what the instance runs.
    """
    from .engine import StartError
    from .storage import VersionNotFound, parse_version
    from .view import make_view

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
            if no_wait or (not created and instance.status.terminal):
                outcome["existing" if not created else "queued"] = instance
                return
            await _follow(engine, definition, instance, view, outcome, resume=not created)
            outcome["orphans"] = len(await engine.storage.list_resumable())

    _trio_run(main_task)
    if "invalid" in outcome:
        _fail(outcome["invalid"])
    for key in ("queued", "existing"):
        inst = outcome.get(key)
        if inst is None:
            continue
        if as_json:
            click.echo(json.dumps(_instance_json(inst, []), indent=2, default=str))
        elif key == "queued":
            click.echo(f"{inst.instance_id}\n{inst.workflow_id} v{inst.version}: instance {inst.instance_id} created "
                       f"(queued, no worker runs it yet): `legato resume {inst.instance_id}` runs it")
        else:
            click.echo(f"request id {request_id!r} already started instance {inst.instance_id} "
                       f"({inst.workflow_id} v{inst.version}): {inst.status.value}")
        if key == "queued" or not inst.status.terminal:
            sys.exit(EXIT_OK)
        sys.exit(EXIT_OK if inst.status.value == "SUCCEEDED" else EXIT_FAILED)
    code = _report(view, outcome, as_json)
    if outcome.get("orphans"):
        click.echo(f"note: {outcome['orphans']} unfinished instance(s) in the store have no live worker; "
                   "`legato resume` picks them up", err=True)
    sys.exit(code)


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
    from .definition import DefinitionError
    from .engine import LeaseHeld
    from .storage import StorageError
    from .view import PlainView

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
            for record in todo:
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


@main.command()
@click.argument("instance")
@_store_option
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="Where instances get their working directories [default: .legato/runs].")
@_settings_option
@click.option("--json", "as_json", is_flag=True, help="Print the final instance as JSON.")
def restart(instance: str, store: str, workspace: str | None, settings: str | None, as_json: bool) -> None:
    """Run an ended INSTANCE again, in the foreground, from its incomplete steps.

    A new run of the same instance: steps that completed are carried over and never run again;
    those that failed, were stopped or timed out run again (as new attempts, with the params they
    were evaluated with), then what follows them. In a foreach, only the iterations that did not
    succeed run again. INSTANCE is an instance id or a unique prefix of one.
    """
    from .definition import DefinitionError
    from .engine import RestartRefused
    from .storage import StorageError
    from .view import PlainView

    engine = _engine(store, workspace, settings)
    _require_store(engine, store)
    outcome: dict[str, Any] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            found = await _resolve_instance(engine.storage, instance, store)
            try:
                definition = await engine._pinned(found)
            except (DefinitionError, StorageError) as exc:
                raise _Refused(f"instance {found.instance_id} not restarted: {_unloadable(found, exc)}") from None
            view = PlainView(definition, quiet=as_json)
            outcome["view"] = view
            try:
                await _follow(engine, definition, found, view, outcome, restart=True)
            except* RestartRefused as group:
                raise _Refused(str(group.exceptions[0])) from None

    _trio_run(main_task)
    sys.exit(_report(outcome["view"], outcome, as_json))


def _ended(record) -> str:
    """Why ``legato resume`` refuses an instance that has ended, and what to do instead."""
    head = f"instance {record.instance_id} ({record.workflow_id}) already ended {record.status.value}"
    if record.status.value == "SUCCEEDED":
        return f"{head}: nothing to resume"
    return (f"{head}; resume continues only unfinished instances: `legato restart {record.instance_id}` runs it "
            "again from its incomplete steps")


def _unloadable(record, exc: Exception) -> str:
    """Why a stored instance's definition cannot be run here, and what to do."""
    from .definition import DefinitionError

    if not isinstance(exc, DefinitionError):
        return str(exc)
    problems = "; ".join(f"{p.pointer}: {p.message}" if p.pointer else p.message for p in exc.problems[:5])
    more = f" (and {len(exc.problems) - 5} more)" if len(exc.problems) > 5 else ""
    return (f"its definition ({record.workflow_id} v{record.version}) no longer loads here: {problems}{more}. "
            "Install the plugins it needs (legato plugins), or run a corrected definition as a new instance")


@main.command()
@click.argument("instance", required=False)
@click.argument("step", required=False)
@click.option("--iteration", type=click.IntRange(min=1), metavar="N",
              help="With STEP (a foreach or while): show iteration N's steps (iterations count from 1).")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(instance: str | None, step: str | None, iteration: int | None, store: str, as_json: bool) -> None:
    """Show an instance (default: the newest) and the latest attempt of each of its steps.

    INSTANCE is an instance id or a unique prefix of one. A foreach or while step shows as one
    row with its iterations counted by state; STEP --iteration N shows one iteration's steps
    (STEP is a path for a loop inside a loop: `outer/2/inner`).
    """
    from . import overview

    if iteration is not None and step is None:
        _fail("--iteration needs a STEP: legato status INSTANCE STEP --iteration N", EXIT_INVALID)
    engine = _read_engine(store)
    found: dict[str, Any] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            record = await _resolve_instance(engine.storage, instance, store) if instance is not None else \
                next(iter(await engine.storage.list_instances(limit=1)), None)
            if record is not None:
                found["instance"] = record
                found["attempts"] = await engine.storage.get_attempts(record.instance_id)
                if as_json:
                    found["steps"] = await _step_ids(engine, record)
                else:
                    found["retries"] = await _pending_retries(engine, record, found["attempts"])

    _trio_run(main_task)
    if "instance" not in found:
        _fail(f"no instances in {store} yet", EXIT_FAILED)
    record, attempts = found["instance"], found["attempts"]
    top = overview.tree(attempts)
    nodes = top
    if step is not None:
        path = f"{step.strip('/')}/{iteration}" if iteration is not None else step.strip("/")
        node = overview.find(top, path)
        if node is None:
            what = f"iteration {iteration} of step {step!r}" if iteration is not None else f"step {step!r}"
            known = ", ".join(sorted(top)[:20]) or "none yet"
            _fail(f"instance {record.instance_id} has no {what} (its steps: {known})", EXIT_INVALID)
        nodes = {step: node} if iteration is None else node.children
    if as_json:
        out = _instance_json(record, [], found["steps"] if step is None else ())
        out["steps"].update({name: overview.to_json(n, _iso) for name, n in nodes.items()})
        if iteration is not None:
            out["iteration"] = {"step": step, "number": iteration}
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"{record.workflow_id} v{record.version} [{record.instance_id}] {record.status.value}"
               + (f": {record.message}" if record.message else ""))
    if record.parent:
        p = record.parent
        click.echo(f"  subworkflow of instance {p['instance_id']} ({p['workflow_id']}), step {p['step_id']} "
                   f"attempt {p['attempt']}")
    if iteration is not None:
        click.echo(f"  iteration {iteration} of {step}: " + (node.record.status.value if node.record else "?")
                   + (f" {json.dumps(node.record.params)[:100]}" if node.record and node.record.params else ""))
    for name, n in nodes.items():
        a = n.record
        if a is None:
            continue
        took = f"{a.ended_at - a.started_at:.2f}s" if a.ended_at and a.started_at else ""
        first = a.message.strip().splitlines()[0] if a.message.strip() else ""
        state = found["retries"].get(a.step_id) or a.status.value
        if n.children and not n.is_iteration:
            kind = "foreach" if overview.loop_total(a) is not None else "while"
            first = overview.loop_summary(kind, n) + (f"  {first}" if first else "")
        click.echo(f"  {name:<24} {state:<22} attempt {a.attempt:<3} {took:>9}  {first[:100]}")


async def _pending_retries(engine, record, attempts) -> dict[str, str]:
    """``RETRYING in 4s (attempt 2/3)`` for each step of a running instance whose latest attempt
    failed and will be retried (counted as the engine counts, per failure class), so that
    ``status`` does not show a failure the engine is about to retry as final."""
    import time

    from .definition import RETRY_CLASSES, DefinitionError

    last: dict[str, Any] = {}
    for a in attempts:
        last[a.step_id] = a
    failed = [a for a in last.values() if a.status.value in _MAY_RETRY]
    if record.status.terminal or not failed:
        return {}
    version = await engine.storage.get_definition(record.workflow_id, record.version)
    try:
        steps = {s.id: s for s in engine.load(version.document).steps} if version is not None else {}
    except DefinitionError:  # it no longer loads here: show the stored states as they are
        return {}
    out = {}
    for a in failed:
        sdef = steps.get(a.step_id)
        if sdef is None:
            continue
        policy, kind = sdef.retry, _MAY_RETRY.index(a.status.value)
        limit = (policy.error_retry_limit, policy.platform_retry_limit, policy.timeout_retry_limit)[kind]
        n = sum(b.step_id == a.step_id and b.status is a.status for b in attempts)
        if n > limit:
            continue
        backoff = policy.backoff_for(RETRY_CLASSES[kind])
        left = max(0, math.ceil((a.ended_at or time.time()) + backoff.delay(n) - time.time()))
        when = (f"in {left}s" + ("+" if backoff.jitter else "")) if left else "now"
        out[a.step_id] = f"RETRYING {when} (attempt {a.attempt + 1}/{a.attempt + 1 + limit - n})"
    return out


@main.command(name="list")
@_store_option
@click.option("--workflow", default=None, help="Only instances of this workflow id.")
@click.option("--state", type=click.Choice(INSTANCE_STATES, case_sensitive=False), default=None,
              help="Only instances in this state.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1_000_000), help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_instances(store: str, workflow: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List instances, newest first (only those of --workflow and in --state when given)."""
    from .states import InstanceStatus

    engine = _read_engine(store)
    rows: list[Any] = []
    status = InstanceStatus(state.upper()) if state else None

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            rows.extend(await engine.storage.list_instances(workflow, limit, status))

    _trio_run(main_task)
    if as_json:
        click.echo(json.dumps([_instance_json(r, []) for r in rows], indent=2, default=str))
        return
    import time as _time

    for r in rows:
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(r.created_at))
        click.echo(f"{r.instance_id}  {when}  {r.workflow_id:<24} v{r.version:<3} {r.status.value}")


FOLLOW_EVERY = 0.2  # seconds between `legato logs -f` reads of the store
_MAY_RETRY = ("USER_FAILED", "PLATFORM_FAILED", "TIMEOUT_FAILED")  # a retry may follow these


@main.command()
@click.argument("instance")
@click.argument("step", required=False)
@click.option("--attempt", type=click.IntRange(1, 2**31), default=None, help="Only this attempt.")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new output as it is written, until the instance (or STEP) ends.")
@_store_option
def logs(instance: str, step: str | None, attempt: int | None, follow: bool, store: str) -> None:
    """Print the logs (stdout and stderr) of an instance's steps, or of one STEP.

    INSTANCE is an instance id or a unique prefix of one. With -f, output is printed as the
    instance writes it (from any process using the same store) and the command ends by itself when
    the instance ends, or STEP does (its attempt ends and no retry can follow it).
    """
    engine = _read_engine(store)
    said: dict[str, str] = {}
    current: list[Any] = [None]

    def echo(chunks) -> None:
        for chunk in chunks:
            key = (chunk.step_id, chunk.attempt)
            if step is None and key != current[0]:
                click.echo(f"== {chunk.step_id} #{chunk.attempt}")
                current[0] = key
            click.echo(chunk.text, nl=False)
        sys.stdout.flush()

    async def main_task() -> None:
        import trio

        async with _opened(engine.storage, store):
            record = await _resolve_instance(engine.storage, instance, store)
            iid, offset = record.instance_id, 0
            while True:
                # The state first, then the output: everything written before that state is read.
                record = await engine.storage.get_instance(iid)
                attempts = await engine.storage.get_attempts(iid)
                ended = record.status.terminal or (step is not None and _step_ended(attempts, step, attempt))
                if follow and not ended:
                    lease = await engine.storage.get_lease(iid)
                    gone = lease is None or not lease.live
                    if gone and not (await engine.storage.get_instance(iid)).status.terminal:
                        said["orphan"] = (f"instance {iid} ({record.workflow_id}) is {record.status.value} but no live "
                                          f"worker runs it (its worker died or its lease expired): `legato resume "
                                          f"{iid}` continues it. Stopped following")
                    elif gone:
                        continue  # it ended just now: read its last state and output
                if not follow or ended:
                    _check_attempt(record, attempts, step, attempt)
                elif not offset and step is not None:  # following waits for a step yet to start
                    await _check_step_defined(engine, record, step)
                chunks = await engine.storage.get_logs_since(iid, offset, step, attempt)
                offset += len(chunks)
                echo(chunks)
                if not follow or ended or "orphan" in said:
                    break
                await trio.sleep(FOLLOW_EVERY)
            if not offset:
                which = f"step {step}" + (f" attempt {attempt}" if attempt else "") if step else \
                    (f"attempt {attempt} of its steps" if attempt else "its steps")
                said["empty"] = f"instance {iid}: {which} logged nothing"

    _trio_run(main_task)
    if "empty" in said:  # not silence: say that there is nothing (on stderr, so output stays the log)
        click.echo(f"legato: {said['empty']}", err=True)
    if "orphan" in said:
        _fail(said["orphan"], EXIT_FAILED)


async def _check_step_defined(engine, record, step: str) -> None:
    """Refuse (exit 2) following a STEP that the instance's definition does not have."""
    from .definition import DefinitionError

    version = await engine.storage.get_definition(record.workflow_id, record.version)
    try:
        ids = [s.id for s in engine.load(version.document).steps] if version is not None else []
    except DefinitionError:  # it no longer loads here: the instance's end settles it
        return
    if ids and step not in ids:
        raise _Refused(f"instance {record.instance_id} ({record.workflow_id}) has no step {step!r}; "
                       f"its steps: {', '.join(ids)}")


def _step_ended(attempts, step: str, attempt: int | None) -> bool:
    """Whether ``step`` (or that attempt of it) has ended for good while its instance runs on: its
    latest attempt ended in a state no retry follows (after a retryable failure, a retry may)."""
    mine = [a for a in attempts if a.step_id == step and (attempt is None or a.attempt == attempt)]
    if not mine or not mine[-1].status.terminal:
        return False
    return attempt is not None or mine[-1].status.value not in _MAY_RETRY


def _check_attempt(record, attempts, step: str | None, attempt: int | None) -> None:
    """Refuse (exit 2) a STEP or --attempt that instance ``record`` does not have, naming what it has."""
    iid = record.instance_id
    steps = list(dict.fromkeys(a.step_id for a in attempts))
    if step is not None:
        tries = [a.attempt for a in attempts if a.step_id == step]
        if not tries:
            have = f"steps that have started: {', '.join(steps)}" if steps else "none of its steps has started"
            raise _Refused(f"instance {iid} ({record.workflow_id}) has no step {step!r} with an attempt; {have}")
        if attempt is not None and attempt not in tries:
            raise _Refused(f"step {step!r} of instance {iid} has no attempt {attempt}; it has attempt"
                           f"{'s' if len(tries) > 1 else ''} {', '.join(map(str, tries))}")
    elif attempt is not None and all(a.attempt != attempt for a in attempts):
        most = max((a.attempt for a in attempts), default=0)
        raise _Refused(f"no step of instance {iid} has an attempt {attempt}"
                       + (f"; the most any step has is {most}" if most else "; none of its steps has started"))


def _internal_error(exc: BaseException) -> None:
    import tempfile
    import traceback

    from .secrets import mask_known

    # Masked with every secret this process resolved: an exception's message may quote one.
    report = mask_known("".join(traceback.format_exception(exc)))
    with tempfile.NamedTemporaryFile("w", prefix="legato-crash-", suffix=".txt", delete=False) as f:
        f.write(report)
    _fail(mask_known(f"internal error ({type(exc).__name__}: {exc}); this is a bug in Legato or a plugin. "
                     f"Details: {f.name}"), EXIT_FAILED)


async def _interrupt(engine, instance_id: str, outcome: dict, view) -> None:
    """Ctrl-C (or SIGTERM) stops the instance cleanly; a second one kills it."""
    import signal

    import trio

    from .view import STOPPING

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


async def _step_ids(engine, record) -> list[str]:
    """The step ids of the instance's definition version, in order; none if it no longer loads
    here (the JSON then lists the steps that have attempts)."""
    from .definition import DefinitionError

    version = await engine.storage.get_definition(record.workflow_id, record.version)
    if version is None:
        return []
    try:
        return [s.id for s in engine.load(version.document).steps]
    except DefinitionError:
        return []


def _iso(ts: float | None) -> str | None:
    """An ISO-8601 UTC timestamp to the millisecond (``2026-01-05T09:30:12.345+00:00``), or None."""
    import datetime

    if not ts:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds")


def _instance_json(instance, attempts, step_ids=()) -> dict[str, Any]:
    """The instance and every step of its definition (``step_ids``): a step never created is
    NOT_CREATED, attempt 0, as in Maestro's step overview. A foreach or while step holds its
    ``iterations`` (by number, from 1), each with its loop variables and its own ``steps``."""
    from . import overview

    steps: dict[str, Any] = {
        sid: {"status": "NOT_CREATED", "attempt": 0, "outputs": {}, "message": "", "started_at": None,
              "ended_at": None}
        for sid in step_ids
    }
    steps.update({name: overview.to_json(node, _iso) for name, node in overview.tree(attempts).items()})
    return {
        "instance_id": instance.instance_id, "workflow_id": instance.workflow_id, "version": instance.version,
        "status": instance.status.value, "message": instance.message, "params": instance.params,
        "created_at": _iso(instance.created_at), "started_at": _iso(instance.started_at),
        "ended_at": _iso(instance.ended_at), "parent": instance.parent, "steps": steps,
    }


@main.command()
@click.argument("target", metavar="FILE|INSTANCE")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True,
              help="Mermaid (rendered by GitHub and most Markdown viewers) or Graphviz DOT (`| dot -Tsvg`).")
@_store_option
def graph(target: str, fmt: str, store: str) -> None:
    """Print the DAG of a definition FILE, or of an INSTANCE with each step coloured by its state.

    INSTANCE is an instance id or a unique prefix of one (read from --store).
    """
    from .definition import DefinitionError
    from .graph import FORMATS

    draw = FORMATS[fmt]
    if os.path.exists(target) or target.endswith((".json", ".yaml", ".yml")):
        engine = _engine(store)
        try:
            definition = engine.load(target)
        except DefinitionError as exc:
            _print_problems(exc)
            sys.exit(EXIT_INVALID)
        click.echo(draw(definition), nl=False)
        return
    from .storage import StorageError

    engine = _read_engine(store)
    found: dict[str, Any] = {}

    async def main_task() -> None:
        async with _opened(engine.storage, store):
            record = await _resolve_instance(engine.storage, target, store)
            version = await engine.storage.get_definition(record.workflow_id, record.version)
            try:
                if version is None:
                    raise StorageError(f"its definition {record.workflow_id} v{record.version} is missing from the store")
                found["definition"] = engine.load(version.document)
            except (DefinitionError, StorageError) as exc:
                raise _Refused(f"cannot draw instance {record.instance_id}: {_unloadable(record, exc)}") from None
            found["record"] = record
            found["attempts"] = await engine.storage.get_attempts(record.instance_id)

    _trio_run(main_task)
    record, statuses, attempts = found["record"], {}, {}
    for a in sorted(found["attempts"], key=lambda a: (a.run_id, a.attempt)):  # the latest attempt is the state
        statuses[a.step_id], attempts[a.step_id] = a.status.value, a.attempt
    title = f"{record.workflow_id} v{record.version} [{record.instance_id}] {record.status.value}"
    click.echo(draw(found["definition"], statuses, attempts, title=title), nl=False)


@main.command()
@click.option("--path", "show_path", is_flag=True, help="Print where the schema file is instead (for editor settings).")
def schema(show_path: bool) -> None:
    """Print the JSON Schema (draft 2020-12) of the definition format, for editors to complete and check
    definitions (see the README's "Editor support")."""
    from .schema import SCHEMA_PATH

    if show_path:
        click.echo(str(SCHEMA_PATH))
    else:
        click.echo(SCHEMA_PATH.read_text(encoding="utf-8"), nl=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins: what each provides, its distribution and version, and whether it can run here."""
    rows = _plugins().infos()
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("name", "kind", "plugin", "distribution", "version", "status"):
        table.add_column(column)
    for row in rows:
        status = "available" if row.unavailable is None else f"unavailable: {row.unavailable}"
        # Escaped: `pip install 'legato[sql]'` is text, not rich markup.
        table.add_row(*(escape(cell) for cell in (row.name, row.kind, row.plugin, row.distribution, row.version,
                                                   status)))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
