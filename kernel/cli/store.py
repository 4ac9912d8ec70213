"""What a command opens: the engine with its settings, the store behind ``--store`` (refused
or explained when it cannot work), the definition it runs and the instance it names."""

from __future__ import annotations

import math
import os
import sys

import click

from .group import EXIT_INVALID, _Refused, _fail, _plugins, _print_problems, _print_warnings


DEFAULT_STORE = "sqlite:///.legato/legato.db"


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
    from .. import yaml12

    try:
        settings = yaml12.load(text)  # YAML 1.2 is a superset of JSON
    except yaml12.YamlError as exc:
        _fail(f"settings {path} is not valid JSON or YAML: {exc.located()}")
    if settings is None:
        return None  # an empty file: no settings
    from ..steptype import SettingsError, validate_step_settings

    try:
        return validate_step_settings(_plugins().step_types.types, settings)
    except SettingsError as exc:
        for key, message in exc.problems:
            click.echo(f"legato: settings {path}: {key + ': ' if key else ''}{message}", err=True)
        sys.exit(EXIT_INVALID)


def _engine(store: str, workspace: str | None = None, settings: str | None = None):
    from ..engine import Engine
    from ..storage import StorageError, open_storage

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
        from ..storage import StorageError

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


def _load_or_exit(engine, source):
    """The definition ``source`` (a file or a stored document) loaded and validated, or its
    problems printed and exit 2."""
    from ..definition import DefinitionError

    try:
        definition = engine.load(source)
    except DefinitionError as exc:
        _print_problems(exc)
        sys.exit(EXIT_INVALID)
    _print_warnings(definition)
    return definition


def _unloadable(record, exc: Exception) -> str:
    """Why a stored instance's definition cannot be run here, and what to do."""
    from ..definition import DefinitionError

    if not isinstance(exc, DefinitionError):
        return str(exc)
    problems = "; ".join(f"{p.pointer}: {p.message}" if p.pointer else p.message for p in exc.problems[:5])
    more = f" (and {len(exc.problems) - 5} more)" if len(exc.problems) > 5 else ""
    return (f"its definition ({record.workflow_id} v{record.version}) no longer loads here: {problems}{more}. "
            "Install the plugins it needs (legato plugins), or run a corrected definition as a new instance")
