"""The plugin manager: hookspecs, entry points, and the registries the hooks fill (DESIGN §6).

The rest of Legato talks to plugins only through :class:`Plugins`; nothing else touches pluggy.
First-party plugins load through the ``legato`` entry-point group exactly like third-party ones.

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
from typing import Any, Callable

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
        self.types: dict[str, type[StepType]] = {}

    def add(self, cls: type[StepType]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, StepType)):
            raise PluginError(f"{self._plugins._current} registered {cls!r}, which is not a StepType subclass")
        if not cls.name or not cls.name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"{self._plugins._current} registered {cls.__name__} without a valid `name`")
        self._claim(cls.name)
        self.types[cls.name] = cls


class StorageRegistry(_Registry):
    """Where ``legato_register_storage`` adds URL schemes and their factories."""

    kind = "storage scheme"

    def __init__(self, plugins: "Plugins") -> None:
        super().__init__(plugins)
        self.factories: dict[str, Callable[..., Any]] = {}
        self.unavailable: dict[str, Callable[[], str | None]] = {}

    def add(self, scheme: str, factory: Callable[..., Any],
            unavailable: Callable[[], str | None] | None = None) -> None:
        """``unavailable()``, if given, returns why the scheme cannot be used here (a missing
        driver, with the install command) or None; ``legato plugins`` shows it."""
        if not callable(factory) or (unavailable is not None and not callable(unavailable)):
            raise PluginError(f"{self._plugins._current} registered storage {scheme!r} with a non-callable factory")
        self._claim(scheme)
        self.factories[scheme] = factory
        if unavailable is not None:
            self.unavailable[scheme] = unavailable


class TriggerRegistry(_Registry):
    """Where ``legato_register_triggers`` adds trigger types."""

    kind = "trigger type"

    def __init__(self, plugins: "Plugins") -> None:
        super().__init__(plugins)
        self.types: dict[str, type] = {}

    def add(self, cls: type) -> None:
        name = getattr(cls, "name", "")
        if not name:
            raise PluginError(f"{self._plugins._current} registered trigger {cls!r} without a `name`")
        self._claim(name)
        self.types[name] = cls


class CelFunctionRegistry(_Registry):
    """Where ``legato_register_cel_functions`` adds functions callable from CEL."""

    kind = "CEL function"

    def __init__(self, plugins: "Plugins") -> None:
        super().__init__(plugins)
        self.functions: dict[str, Callable[..., Any]] = {}

    def add(self, name: str, function: Callable[..., Any]) -> None:
        if not name.isidentifier() or not callable(function):
            raise PluginError(f"{self._plugins._current} registered an invalid CEL function {name!r}")
        self._claim(name)
        self.functions[name] = function


class Plugins:
    """The loaded plugins and what they registered. Build it with :func:`get_plugins`."""

    def __init__(self, *, entry_points: bool = True, only: set[str] | None = None, extra: list[Any] = ()) -> None:
        self.pm = pluggy.PluginManager("legato")
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get("LEGATO_TRACE_HOOKS"):
            self.pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
            self.pm.enable_tracing()
        self.sources: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        #: Entry points that could not be imported for want of a library (listed as unavailable).
        self.missing: list[PluginInfo] = []
        self._current = "?"
        if entry_points:
            self._load_entry_points(only)
        for plugin in extra:
            name = self.pm.register(plugin, name=getattr(plugin, "__name__", None))
            self.sources[name] = ("(in process)", "")
        self.pm.check_pending()
        self.step_types = StepTypeRegistry(self)
        self.storage = StorageRegistry(self)
        self.triggers = TriggerRegistry(self)
        self.cel_functions = CelFunctionRegistry(self)
        for hook, registry in (
            ("legato_register_step_types", self.step_types),
            ("legato_register_storage", self.storage),
            ("legato_register_triggers", self.triggers),
            ("legato_register_cel_functions", self.cel_functions),
        ):
            self._call_register(hook, registry)
        # Observers are called per event: skip the hook call entirely when nobody listens.
        self.has_event_observers = bool(self.pm.hook.legato_on_event.get_hookimpls())

    def _load_entry_points(self, only: set[str] | None) -> None:
        env_only = os.environ.get("LEGATO_PLUGINS")
        if only is None and env_only:
            only = {name.strip() for name in env_only.split(",") if name.strip()}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if only is not None and ep.name not in only:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            dist = ep.dist
            source = (dist.name if dist else "?", dist.version if dist else "?")
            try:
                module = ep.load()
            except ModuleNotFoundError as exc:
                if not exc.name or exc.name.split(".")[0] == ep.module.split(".")[0]:  # its own package
                    raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
                # A library the plugin needs is missing: the plugin is listed as unavailable,
                # with the install command, and the rest of Legato carries on.
                self.missing.append(PluginInfo(ep.name, "plugin", ep.name, *source,
                                               unavailable=_missing_library(exc.name or "?", dist)))
                continue
            except Exception as exc:  # a broken plugin must not take Legato down
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            self.pm.register(module, name=ep.name)
            self.sources[ep.name] = source

    def _call_register(self, hook: str, registry: _Registry) -> None:
        caller = getattr(self.pm.hook, hook)
        for impl in caller.get_hookimpls():  # registration order: entry points first
            self._current = impl.plugin_name
            impl.function(registry)
        self._current = "?"

    def emit(self, event: Any) -> None:
        """Hand a durable timeline event to the ``legato_on_event`` observers."""
        self.pm.hook.legato_on_event(event=event)

    def infos(self) -> list[PluginInfo]:
        """What ``legato plugins`` lists: every registered thing, where it came from, if it can run."""
        rows = []

        def add(kind: str, name: str, owner: str, unavailable: str | None = None) -> None:
            dist, version = self.sources.get(owner, ("?", "?"))
            rows.append(PluginInfo(name, kind, owner, dist, version, unavailable))

        for name, cls in sorted(self.step_types.types.items()):
            add("step type", name, self.step_types._owner[name], cls.unavailable())
        for name in sorted(self.storage.factories):
            why = self.storage.unavailable.get(name)
            add("storage", name, self.storage._owner[name], why() if why else None)
        for name in sorted(self.triggers.types):
            add("trigger", name, self.triggers._owner[name])
        for name in sorted(self.cel_functions.functions):
            add("CEL function", name, self.cel_functions._owner[name])
        return rows + self.missing


_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


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
