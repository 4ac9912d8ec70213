"""The plugin manager: hookspecs, entry points, and the registries the hooks fill (DESIGN §6).

The rest of Legato talks to plugins only through :class:`Plugins`; nothing else touches pluggy.
First-party plugins load through the ``legato`` entry-point group exactly like third-party ones.

Entry points load on demand, so a run pays only for the plugins it uses: looking up a step type
or storage scheme loads the entry point of that name (a plugin that provides several names lists
one entry point per name, all naming the same module), and a name no entry point has loads them
all, as does listing a registry (``legato plugins``, an unknown-type error), the first CEL
expression compiled (plugins may add functions) and building an engine's event observers (every
entry point outside the ``legato`` package loads then; first-party plugins observe nothing).

Environment switches:

- ``LEGATO_PLUGINS=bash,noop``: load only these entry points (by entry-point name);
- ``LEGATO_TRACE_HOOKS=1``: print every hook call to stderr.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import pluggy

from . import hookspecs
from .steptype import StepType

__all__ = ["Plugins", "PluginInfo", "PluginError", "get_plugins"]

ENTRY_POINT_GROUP = "legato"


class PluginError(Exception):
    """A plugin could not be loaded or registered something invalid."""


@dataclass
class PluginInfo:
    """One row of ``legato plugins``."""

    name: str
    kind: str
    plugin: str
    distribution: str
    version: str
    unavailable: str | None = None


class _OnDemand(Mapping):
    """A registry's table that loads entry points as it is read: a missing name loads the entry
    point of that name, then all of them; iterating or sizing it loads all of them."""

    __slots__ = ("_plugins", "_table")

    def __init__(self, plugins: "Plugins", table: dict) -> None:
        self._plugins, self._table = plugins, table

    def __getitem__(self, name: str) -> Any:
        try:
            return self._table[name]
        except KeyError:
            if not self._plugins._load_for(name):
                raise
        return self._table[name]

    def __contains__(self, name: object) -> bool:
        return name in self._table or (isinstance(name, str) and self._plugins._load_for(name) and name in self._table)

    def __iter__(self) -> Iterator[str]:
        self._plugins._load_all()
        return iter(self._table)

    def __len__(self) -> int:
        self._plugins._load_all()
        return len(self._table)

    def __repr__(self) -> str:
        return f"<{len(self._table)} loaded of {type(self._plugins).__name__}>"


class _Registry:
    kind = ""

    def __init__(self, plugins: "Plugins") -> None:
        self._plugins = plugins
        self._owner: dict[str, str] = {}

    def _claim(self, name: str) -> None:
        current = self._plugins._current
        if name in self._owner:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {self._owner[name]} and by {current}. "
                f"Uninstall one of them, or load only one with LEGATO_PLUGINS."
            )
        self._owner[name] = current


class StepTypeRegistry(_Registry):
    """Where ``legato_register_step_types`` adds step-type classes."""

    kind = "step type"

    def __init__(self, plugins: "Plugins") -> None:
        super().__init__(plugins)
        self._types: dict[str, type[StepType]] = {}
        self.types: Mapping[str, type[StepType]] = _OnDemand(plugins, self._types)

    def add(self, cls: type[StepType]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, StepType)):
            raise PluginError(f"{self._plugins._current} registered {cls!r}, which is not a StepType subclass")
        if not cls.name or not cls.name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"{self._plugins._current} registered {cls.__name__} without a valid `name`")
        self._claim(cls.name)
        self._types[cls.name] = cls


class StorageRegistry(_Registry):
    """Where ``legato_register_storage`` adds URL schemes and their factories."""

    kind = "storage scheme"

    def __init__(self, plugins: "Plugins") -> None:
        super().__init__(plugins)
        self._factories: dict[str, Callable[..., Any]] = {}
        self.factories: Mapping[str, Callable[..., Any]] = _OnDemand(plugins, self._factories)
        self.unavailable: dict[str, Callable[[], str | None]] = {}

    def add(self, scheme: str, factory: Callable[..., Any],
            unavailable: Callable[[], str | None] | None = None) -> None:
        """``unavailable()``, if given, returns why the scheme cannot be used here (a missing
        driver, with the install command) or None; ``legato plugins`` shows it."""
        if not callable(factory) or (unavailable is not None and not callable(unavailable)):
            raise PluginError(f"{self._plugins._current} registered storage {scheme!r} with a non-callable factory")
        self._claim(scheme)
        self._factories[scheme] = factory
        if unavailable is not None:
            self.unavailable[scheme] = unavailable


class TriggerRegistry(_Registry):
    """Where ``legato_register_triggers`` adds trigger types."""

    kind = "trigger type"

    def __init__(self, plugins: "Plugins") -> None:
        super().__init__(plugins)
        self._types: dict[str, type] = {}
        self.types: Mapping[str, type] = _OnDemand(plugins, self._types)

    def add(self, cls: type) -> None:
        from .triggers import WORKFLOW_FIELDS, TriggerType

        if not (isinstance(cls, type) and issubclass(cls, TriggerType)):
            raise PluginError(f"{self._plugins._current} registered {cls!r}, which is not a TriggerType subclass")
        name = cls.name
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"{self._plugins._current} registered trigger {cls.__name__} without a valid `name`")
        if cls.field not in WORKFLOW_FIELDS:
            raise PluginError(f"{self._plugins._current} registered trigger {name!r} reading workflow field "
                              f"{cls.field!r}; trigger fields are {', '.join(sorted(WORKFLOW_FIELDS))}")
        self._claim(name)
        self._types[name] = cls


class CelFunctionRegistry(_Registry):
    """Where ``legato_register_cel_functions`` adds functions callable from CEL."""

    kind = "CEL function"

    def __init__(self, plugins: "Plugins") -> None:
        super().__init__(plugins)
        self._functions: dict[str, Callable[..., Any]] = {}
        self.functions: Mapping[str, Callable[..., Any]] = _OnDemand(plugins, self._functions)

    def add(self, name: str, function: Callable[..., Any]) -> None:
        if not name.isidentifier() or not callable(function):
            raise PluginError(f"{self._plugins._current} registered an invalid CEL function {name!r}")
        self._claim(name)
        self._functions[name] = function


class Plugins:
    """The loaded plugins and what they registered. Build it with :func:`get_plugins`."""

    def __init__(self, *, entry_points: bool = True, only: set[str] | None = None, extra: list[Any] = ()) -> None:
        self.pm = pluggy.PluginManager("legato")
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get("LEGATO_TRACE_HOOKS"):
            self.pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
            self.pm.enable_tracing()
        #: Where each registered plugin came from: entry-point plugins hold their entry point
        #: (distribution and version are read only for ``legato plugins``).
        self._origin: dict[str, Any] = {}
        #: Entry points that could not be imported for want of a library (listed as unavailable).
        self.missing: list[PluginInfo] = []
        self._current = "?"
        self.step_types = StepTypeRegistry(self)
        self.storage = StorageRegistry(self)
        self.triggers = TriggerRegistry(self)
        self.cel_functions = CelFunctionRegistry(self)
        self._registries = (
            ("legato_register_step_types", self.step_types),
            ("legato_register_storage", self.storage),
            ("legato_register_triggers", self.triggers),
            ("legato_register_cel_functions", self.cel_functions),
        )
        self._pending: dict[str, importlib.metadata.EntryPoint] = {}  # not loaded yet, by name
        self._loaded_values: dict[str, str] = {}  # entry-point value -> the plugin name it loaded as
        if entry_points:
            self._pending = self._entry_points(only)
        # A plugin listed under several names is named for its module (`sqlstore`), else its first name.
        self._names: dict[str, str] = {}  # entry-point value -> the plugin's name
        for name, ep in self._pending.items():
            if name == ep.value.split(":")[0].rsplit(".", 1)[-1] or ep.value not in self._names:
                self._names[ep.value] = name
        if extra:  # in-process plugins register after every entry point, as they always have
            self._load_all()
        for plugin in extra:
            name = self.pm.register(plugin, name=getattr(plugin, "__name__", None))
            self._origin[name] = None
            self.pm.check_pending()
            self._register(name)
        self._observers: bool | None = None

    @staticmethod
    def _entry_points(only: set[str] | None) -> dict[str, importlib.metadata.EntryPoint]:
        env_only = os.environ.get("LEGATO_PLUGINS")
        if only is None and env_only:
            only = {name.strip() for name in env_only.split(",") if name.strip()}
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if (only is None or ep.name in only) and ep.name not in found:
                found[ep.name] = ep
        return found

    def _load_for(self, name: str) -> bool:
        """Load what may provide ``name``: its entry point, else every entry point left. False
        when nothing was left to load."""
        ep = self._pending.pop(name, None)
        if ep is not None:
            self._load(ep)
            return True
        if not self._pending:
            return False
        self._load_all()
        return True

    def _load_all(self) -> None:
        while self._pending:
            self._load(self._pending.pop(next(iter(self._pending))))

    def _load(self, ep: importlib.metadata.EntryPoint) -> None:
        if ep.value in self._loaded_values or self.pm.get_plugin(ep.name) is not None:
            return  # another name of a plugin already loaded
        try:
            module = ep.load()
        except ModuleNotFoundError as exc:
            if not exc.name or exc.name.split(".")[0] == ep.module.split(".")[0]:  # its own package
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            # A library the plugin needs is missing: the plugin is listed as unavailable,
            # with the install command, and the rest of Legato carries on.
            dist = ep.dist
            self.missing.append(PluginInfo(ep.name, "plugin", ep.name, *_source(ep),
                                           unavailable=_missing_library(exc.name or "?", dist)))
            self._loaded_values[ep.value] = ep.name
            return
        except Exception as exc:  # a broken plugin must not take Legato down
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        # Its other names (entry points with the same value) are this plugin: register it under the
        # first name the group lists, whichever name asked for it.
        name = self._names.get(ep.value, ep.name)
        for other in [n for n, e in self._pending.items() if e.value == ep.value]:
            del self._pending[other]
        self._loaded_values[ep.value] = name
        self.pm.register(module, name=name)
        self._origin[name] = ep
        self.pm.check_pending()
        self._register(name)

    def _register(self, plugin_name: str) -> None:
        """Call ``plugin_name``'s ``register`` hooks with the registries."""
        for hook, registry in self._registries:
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin_name == plugin_name:
                    self._current = plugin_name
                    try:
                        impl.function(registry)
                    finally:
                        self._current = "?"

    @property
    def has_event_observers(self) -> bool:
        """Whether any plugin implements ``legato_on_event`` (observers are called per event, so
        the engine skips the hook entirely when nobody listens). Loads every entry point outside
        the ``legato`` package: only a first-party plugin is known not to observe."""
        if self._observers is None:
            for name, ep in list(self._pending.items()):
                if ep.module.split(".")[0] != "legato" and name in self._pending:
                    del self._pending[name]
                    self._load(ep)
            self._observers = bool(self.pm.hook.legato_on_event.get_hookimpls())
        return self._observers

    @property
    def sources(self) -> dict[str, tuple[str, str]]:
        """Plugin name -> (distribution, version) of every plugin loaded so far."""
        return {name: _source(ep) if ep is not None else ("(in process)", "") for name, ep in self._origin.items()}

    def emit(self, event: Any) -> None:
        """Hand a durable timeline event to the ``legato_on_event`` observers."""
        self.pm.hook.legato_on_event(event=event)

    def infos(self) -> list[PluginInfo]:
        """What ``legato plugins`` lists: every registered thing, where it came from, if it can run."""
        self._load_all()
        sources = self.sources
        rows = []

        def add(kind: str, name: str, owner: str, unavailable: str | None = None) -> None:
            dist, version = sources.get(owner, ("?", "?"))
            rows.append(PluginInfo(name, kind, owner, dist, version, unavailable))

        for name, cls in sorted(self.step_types.types.items()):
            add("step type", name, self.step_types._owner[name], cls.unavailable())
        for name in sorted(self.storage.factories):
            why = self.storage.unavailable.get(name)
            add("storage", name, self.storage._owner[name], why() if why else None)
        for name, cls in sorted(self.triggers.types.items()):
            add("trigger", name, self.triggers._owner[name], cls.unavailable())
        for name in sorted(self.cel_functions.functions):
            add("CEL function", name, self.cel_functions._owner[name])
        return rows + self.missing


_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _source(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.name, dist.version) if dist else ("?", "?")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _missing_library(module: str, dist: importlib.metadata.Distribution | None) -> str:
    """Why a plugin whose import failed on ``module`` cannot run, and the command that installs
    what it needs: the extra of its distribution that requires the library when there is one
    (``pip install 'legato[sql]'``), else the distribution again (its own dependencies), else
    the library by name."""
    top = module.split(".")[0]
    command = f"pip install {top}"
    if dist is not None:
        command = f"pip install '{dist.name}'"  # a dependency of the distribution itself went missing
        for requirement in dist.requires or ():
            name, extra = _REQUIREMENT.match(requirement), _EXTRA.search(requirement)
            if name and _canonical(name.group(1)) == _canonical(top):
                command = f"pip install '{dist.name}[{extra.group(1)}]'" if extra else f"pip install '{dist.name}'"
                break
    return f"the `{top}` library is not installed: {command}"


_default: Plugins | None = None


def get_plugins() -> Plugins:
    """The process's plugins, loaded from entry points on first use."""
    global _default
    if _default is None:
        _default = Plugins()
    return _default
