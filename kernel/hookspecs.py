"""Legato's hook specifications, in the order of a process's life (DESIGN §6).

Hooks are synchronous: the ``register`` hooks are called once, when the plugin loads (entry points
load on demand: see :mod:`legato.plugin_manager`), and receive a registry to add things to; what they add has async methods where it does I/O.
Every hook is named ``legato_<verb>_<noun>``.  Evolve a hook by adding arguments, never by
renaming: an implementation may accept any subset of a hook's arguments.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("legato")
hookimpl = pluggy.HookimplMarker("legato")


@hookspec
def legato_register_step_types(registry):
    """Called once at start-up. Call ``registry.add(cls)`` for each :class:`legato.StepType`
    subclass the plugin provides. A name already taken is an error that names both plugins."""


@hookspec
def legato_register_storage(registry):
    """Called once at start-up. Call ``registry.add(scheme, factory)``: ``factory(url, **options)``
    returns a :class:`legato.storage.Storage` for URLs of that scheme (``memory``, ``sqlite``, …)."""


@hookspec
def legato_register_triggers(registry):
    """Called once at start-up. Call ``registry.add(cls)`` for each trigger type (cron, signal, …)."""


@hookspec
def legato_register_cel_functions(registry):
    """Called once at start-up. Call ``registry.add(name, function)`` to make ``function`` callable
    from every CEL expression. Functions receive and return CEL values and must be pure."""


@hookspec
def legato_on_event(event):
    """Called for every timeline event (:class:`legato.model.Event`) after it is durable.
    Implementations observe (notifications, metrics) and must return quickly without blocking:
    they run on the kernel's event loop. The return value is ignored."""
