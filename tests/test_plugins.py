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
    from legato.triggers import TriggerType

    class Nightly(TriggerType):
        name = "nightly_test"
        field = "time_triggers"

    class Nameless(TriggerType):
        field = "time_triggers"

    class Elsewhere(TriggerType):
        name = "elsewhere"
        field = "email_triggers"

    plugins = Plugins(extra=[_plugin(legato_register_triggers=lambda registry: registry.add(Nightly))])
    assert plugins.triggers.types["nightly_test"] is Nightly
    with pytest.raises(PluginError, match="not a TriggerType subclass"):
        Plugins(extra=[_plugin(legato_register_triggers=lambda registry: registry.add(object))])
    with pytest.raises(PluginError, match="without a valid `name`"):
        Plugins(extra=[_plugin(legato_register_triggers=lambda registry: registry.add(Nameless))])
    with pytest.raises(PluginError, match="reading workflow field 'email_triggers'"):
        Plugins(extra=[_plugin(legato_register_triggers=lambda registry: registry.add(Elsewhere))])


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


# -- entry points load on demand (issue 16: a run pays only for the plugins it uses) -------------

_ON_DEMAND_CHILD = r"""
import json, sys, trio
from legato.engine import Engine
from legato.storage import open_storage

async def main():
    async with open_storage(sys.argv[1]) as storage:
        engine = Engine(storage, workspace=sys.argv[2])
        inst = await engine.execute(engine.load(json.loads(sys.argv[3])))
    loaded = sorted(m for m in sys.modules if m.startswith(("legato.plugins.", "legato_")))
    print(json.dumps({"status": inst.status.value, "loaded": loaded, "seen": getattr(sys, "seen", [])}))

trio.run(main)
"""


def _on_demand(tmp_path, store: str, steps: list[dict], env=None) -> dict:
    import json
    import subprocess
    import sys

    doc = {"workflow": {"id": "od", "steps": [{"step": s} for s in steps]}}
    proc = subprocess.run([sys.executable, "-c", _ON_DEMAND_CHILD, store, str(tmp_path / "ws"), json.dumps(doc)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _first_party(out: dict) -> list[str]:
    return sorted({m.split(".")[2] for m in out["loaded"] if m.startswith("legato.plugins.")})


def test_a_run_imports_only_the_entry_points_its_step_types_and_store_name(tmp_path):
    """A noop workflow on SQLite loads the `noop` entry point and the store's (`sqlite`, one of the
    names of `sqlstore`), not bash, sleep, docker, notebook or sql."""
    out = _on_demand(tmp_path, f"sqlite:///{tmp_path}/s.db", [{"id": "a", "type": "noop"}])
    assert out["status"] == "SUCCEEDED"
    assert _first_party(out) == ["noop", "sqlstore"], out
    out = _on_demand(tmp_path, "memory://", [{"id": "a", "type": "noop"}, {"id": "b", "type": "sleep",
                                                                          "params": {"seconds": 0}}])
    assert out["status"] == "SUCCEEDED"
    assert _first_party(out) == ["memory", "noop", "sleep"], out


def test_a_step_type_named_unlike_its_entry_point_and_a_third_party_observer_still_work(tmp_path):
    """A third-party entry point `fancy` whose module registers the step type `shiny` and observes
    events: a definition naming `shiny` finds it (an unknown name loads every entry point), and its
    observer sees the run's events although no definition names it."""
    import os
    import textwrap

    site = tmp_path / "site"
    (site / "legato_fancy").mkdir(parents=True)
    (site / "legato_fancy" / "__init__.py").write_text(textwrap.dedent("""\
        import sys
        from legato import StepResult, StepType
        from legato.hookspecs import hookimpl

        class Shiny(StepType):
            name = "shiny"

            async def run(self, ctx):
                return StepResult.done({"shone": True})

        @hookimpl
        def legato_register_step_types(registry):
            registry.add(Shiny)

        @hookimpl
        def legato_on_event(event):
            sys.seen = getattr(sys, "seen", []) + [event.status]
        """))
    info = site / "legato_fancy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: legato-fancy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[legato]\nfancy = legato_fancy\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = _on_demand(tmp_path, "memory://", [{"id": "a", "type": "shiny"}], env=env)
    assert out["status"] == "SUCCEEDED" and "legato_fancy" in out["loaded"]
    assert out["seen"][-1] == "SUCCEEDED" and "RUNNING" in out["seen"]
    out = _on_demand(tmp_path, "memory://", [{"id": "a", "type": "noop"}], env=env)
    assert out["status"] == "SUCCEEDED" and out["seen"][-1] == "SUCCEEDED"
