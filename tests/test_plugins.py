"""The plugin manager: hooks, registries and their loud failures (DESIGN §6)."""

from __future__ import annotations

import types

import pytest

from legato import StepResult, StepType
from legato.hookspecs import hookimpl
from legato.plugin_manager import PluginError, Plugins


def _plugin(**hooks):
    module = types.SimpleNamespace(__name__="test-plugin")
    for name, fn in hooks.items():
        setattr(module, name, hookimpl(fn))
    return module


class Dup(StepType):
    name = "noop"

    async def run(self, ctx):
        return StepResult.done()


def test_a_taken_step_type_name_fails_loudly_naming_both():
    extra = _plugin(legato_register_step_types=lambda registry: registry.add(Dup))
    with pytest.raises(PluginError, match="'noop' is registered twice: by noop and by test-plugin"):
        Plugins(extra=[extra])


def test_registering_something_that_is_not_a_step_type_fails():
    extra = _plugin(legato_register_step_types=lambda registry: registry.add(object))
    with pytest.raises(PluginError, match="not a StepType subclass"):
        Plugins(extra=[extra])


def test_a_misspelt_hook_fails_at_start_up():
    extra = _plugin(legato_register_step_type=lambda registry: None)
    with pytest.raises(Exception, match="legato_register_step_type"):
        Plugins(extra=[extra])


async def test_cel_functions_from_plugins_and_event_observers(tmp_path):
    from legato.engine import Engine
    from legato.plugins.memory import MemoryStorage

    seen = []
    extra = _plugin(
        legato_register_cel_functions=lambda registry: registry.add("shout", lambda s: s.upper() + "!"),
        legato_on_event=lambda event: seen.append((event.step_id, event.status)),
    )
    plugins = Plugins(extra=[extra])
    engine = Engine(MemoryStorage(), plugins=plugins, workspace=tmp_path)
    doc = {"workflow": {"id": "p", "params": {"who": "ada", "loud": {"type": "STRING", "expression": "shout(who)"}},
                        "steps": [{"step": {"id": "a", "type": "noop"}}]}}
    instance = await engine.execute(engine.load(doc))
    assert instance.params["loud"] == "ADA!"
    assert ("a", "SUCCEEDED") in seen and (None, "SUCCEEDED") in seen


async def test_evaluated_params_are_checked_against_the_step_type_schema(run_doc):
    doc = {"workflow": {"id": "p", "params": {"n": -1}, "steps": [
        {"step": {"id": "s", "type": "sleep", "params": {"seconds": {"type": "DOUBLE", "expression": "double(n)"}}}}]}}
    result = await run_doc(doc)
    assert result.last["s"].status.value == "INTERNALLY_FAILED"  # params that fail at run time (Maestro)
    assert result.last["s"].message.startswith("/workflow/steps/0/step/params/seconds: sleep:")
    assert "greater than or equal to 0" in result.last["s"].message


# -- one test per hook (tests/test_docs.py checks each hook has one) ------------------------------


def test_hook_legato_register_step_types():
    class Echo(StepType):
        name = "echo_test"

        async def run(self, ctx):
            return StepResult.done(ctx.params)

    plugins = Plugins(extra=[_plugin(legato_register_step_types=lambda registry: registry.add(Echo))])
    assert plugins.step_types.types["echo_test"] is Echo
    assert ("echo_test", "step type", "test-plugin") in [(r.name, r.kind, r.plugin) for r in plugins.infos()]


def test_hook_legato_register_storage():
    from legato.plugins.memory import MemoryStorage
    from legato.storage import open_storage

    plugins = Plugins(extra=[_plugin(legato_register_storage=lambda registry: registry.add("scratch", MemoryStorage))])
    assert isinstance(open_storage("scratch://", plugins), MemoryStorage)


def test_hook_legato_register_triggers():
    class Nightly:
        name = "nightly_test"

    plugins = Plugins(extra=[_plugin(legato_register_triggers=lambda registry: registry.add(Nightly))])
    assert plugins.triggers.types["nightly_test"] is Nightly
    with pytest.raises(PluginError, match="without a `name`"):
        Plugins(extra=[_plugin(legato_register_triggers=lambda registry: registry.add(object))])


def test_hook_legato_register_cel_functions():
    from legato.cel import CelCompiler

    plugins = Plugins(extra=[_plugin(legato_register_cel_functions=lambda registry: registry.add("twice", lambda n: n * 2))])
    compiler = CelCompiler(plugins.cel_functions.functions)
    assert compiler.compile("twice(21)").evaluate({}) == 42


async def test_hook_legato_on_event(tmp_path):
    from legato.engine import Engine
    from legato.plugins.memory import MemoryStorage

    seen = []
    plugins = Plugins(extra=[_plugin(legato_on_event=lambda event: seen.append(event.status))])
    engine = Engine(MemoryStorage(), plugins=plugins, workspace=tmp_path)
    await engine.execute(engine.load({"workflow": {"id": "e", "steps": [{"step": {"id": "a", "type": "noop"}}]}}))
    assert seen[0] == "IN_PROGRESS" and seen[-1] == "SUCCEEDED" and "RUNNING" in seen
