"""The Python API as the README shows it: ``legato.run``, ``await legato.arun``,
``legato.testing.statuses`` and the ``legato_run`` pytest fixture."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading

import pytest
import trio

import legato
from legato.testing import statuses

from .conftest import LEGATO, ROOT

ETL = ROOT / "examples" / "etl.json"
HELLO = {"workflow": {"id": "hello", "params": {"who": "world"}, "steps": [
    {"step": {"id": "greet", "type": "bash", "params": {"script": "echo \"hello $who\"\necho \"said=$who\" >> \"$LEGATO_OUTPUT\""},
              "transition": {"successors": {"after": "steps.greet.outputs.said == 'world'"}}}},
    {"step": {"id": "after", "type": "noop"}}]}}


def _readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_python_example_runs_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    block = _readme_python_blocks()[0]
    namespace: dict = {}
    exec(compile(block.replace("legato.run(\"examples/etl.json\",",
                               f"legato.run(\"examples/etl.json\", workspace={str(tmp_path)!r},"), "README", "exec"),
         namespace)
    instance = namespace["instance"]
    assert instance.status == "SUCCEEDED" and instance.succeeded
    assert instance.statuses == {"extract": "SUCCEEDED", "validate": "SUCCEEDED", "load": "SUCCEEDED",
                                 "alert": "UNSATISFIED", "report": "SUCCEEDED"}
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("SUCCEEDED {'extract': 'SUCCEEDED'")
    assert printed[1] == "140 extracted 3 rows for " + str(instance.params["run_date"])


def test_the_readme_fixture_example_is_a_test_that_passes(tmp_path):
    """The README's fixture block, saved as a test file, passes under pytest (the plugin is installed)."""
    block = _readme_python_blocks()[1]
    assert "def test_" in block and "legato_run" in block
    (tmp_path / "test_readme_fixture.py").write_text(block.replace('"examples/etl.json"', repr(str(ETL))))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_run_returns_the_instance_with_its_steps(tmp_path):
    instance = legato.run(HELLO, params={"who": "world"}, workspace=tmp_path)
    assert isinstance(instance, legato.Instance)
    assert instance.workflow_id == "hello" and instance.version == 1 and instance.params == {"who": "world"}
    greet = instance.steps["greet"]
    assert (greet.status, greet.attempt, greet.outputs, greet.logs) == ("SUCCEEDED", 1, {"said": "world"}, "hello world\n")
    assert [a.attempt for a in greet.attempts] == [1]
    assert list(instance.steps) == ["greet", "after"]


def test_a_failed_workflow_is_returned_not_raised(tmp_path):
    failing = {"workflow": {"id": "fails", "steps": [
        {"step": {"id": "boom", "type": "bash", "params": {"script": "echo bad >&2; exit 3"},
                  "retry_policy": {"error_retry_limit": 1, "backoff": {"type": "fixed", "base": 0}},
                  "transition": {"successors": ["never"]}}},
        {"step": {"id": "never", "type": "noop"}}]}}
    instance = legato.run(failing, workspace=tmp_path)
    assert instance.status == "FAILED" and not instance.succeeded
    assert instance.statuses == {"boom": "FATALLY_FAILED", "never": "NOT_CREATED"}
    boom = instance.steps["boom"]
    assert boom.attempt == 2 and [a.status.value for a in boom.attempts] == ["USER_FAILED", "FATALLY_FAILED"]
    assert boom.logs == "bad\n" and "3" in boom.message


@pytest.mark.parametrize("form", ["path", "str path", "json text", "yaml text", "dict", "Definition"])
def test_a_definition_may_be_a_path_a_text_a_dict_or_a_definition(tmp_path, form):
    import yaml

    path = tmp_path / "hello.json"
    path.write_text(json.dumps(HELLO))
    given = {
        "path": path, "str path": str(path), "json text": json.dumps(HELLO), "yaml text": yaml.safe_dump(HELLO),
        "dict": HELLO,
    }.get(form)
    if form == "Definition":
        from legato.engine import Engine
        from legato.plugins.memory import MemoryStorage

        given = Engine(MemoryStorage()).load(HELLO)
    assert statuses(given, workspace=tmp_path / "runs") == {"greet": "SUCCEEDED", "after": "SUCCEEDED"}


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([LEGATO, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_an_invalid_definition_raises_definition_error_with_the_problems_the_cli_prints(tmp_path):
    bad = {"workflow": {"id": "bad", "steps": [{"step": {"id": "a", "type": "bash", "params": {"script": "true"},
                                                         "transition": {"successors": {"lod": "true"}}}}]}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(legato.DefinitionError) as caught:
        legato.run(path, workspace=tmp_path)
    cli = _cli("validate", str(path), cwd=tmp_path)
    assert cli.returncode == 2
    printed = [line.strip() for line in cli.stderr.splitlines()[1:]]
    assert [str(p) for p in caught.value.problems] == printed == ["/workflow/steps/0/step/transition/successors/lod: "
                                                                  "no such step"]
    assert str(caught.value).splitlines()[1:] == cli.stderr.splitlines()[1:]


def test_a_refused_param_raises_start_error_with_the_cli_message(tmp_path):
    with pytest.raises(legato.StartError) as caught:
        legato.run(ETL, params={"treshold": 5}, workspace=tmp_path)
    cli = _cli("run", str(ETL), "-p", "treshold=5", "--store", "memory://", "--workspace", str(tmp_path), cwd=tmp_path)
    assert cli.returncode == 2
    assert cli.stderr.strip() == f"legato: {caught.value}"
    assert "treshold: not declared by the workflow (did you mean 'threshold'?)" in str(caught.value)


def test_a_store_that_cannot_be_opened_raises_storage_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    url = f"sqlite:///{tmp_path}/file/sub/legato.db"
    with pytest.raises(legato.StorageError) as caught:
        legato.run(HELLO, store=url, workspace=tmp_path)
    assert url in str(caught.value) and "Not a directory" in str(caught.value)
    path = tmp_path / "hello.json"
    path.write_text(json.dumps(HELLO))
    cli = _cli("run", str(path), "--store", url, "--workspace", str(tmp_path), cwd=tmp_path)
    assert cli.returncode == 2 and cli.stderr.strip() == f"legato: {caught.value}"


def test_settings_a_step_type_refuses_raise_settings_error(tmp_path):
    with pytest.raises(legato.SettingsError, match="allowed_mounts"):
        legato.run(HELLO, settings={"docker": {"allowed_mounts": "/"}}, workspace=tmp_path)


def test_a_run_kept_in_a_sqlite_store_is_what_the_cli_shows(tmp_path):
    url = f"sqlite:///{tmp_path}/legato.db"
    instance = legato.run(HELLO, store=url, workspace=tmp_path / "runs")
    shown = _cli("status", instance.id[:8], "--json", "--store", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["instance_id"] == instance.id and status["status"] == "SUCCEEDED"
    assert {sid: s["status"] for sid, s in status["steps"].items()} == instance.statuses
    again = legato.run(HELLO, store=url, workspace=tmp_path / "runs", request_id="once")
    same = legato.run(HELLO, store=url, workspace=tmp_path / "runs", request_id="once")
    assert same.id == again.id != instance.id


async def test_arun_under_trio(tmp_path):
    instance = await legato.arun(HELLO, {"who": "trio"}, workspace=tmp_path)
    assert instance.statuses == {"greet": "SUCCEEDED", "after": "UNSATISFIED"}
    assert instance.steps["greet"].logs == "hello trio\n"


async def test_run_inside_trio_says_to_await_arun():
    with pytest.raises(RuntimeError, match=re.escape("await legato.arun(...)")):
        legato.run(HELLO)


def test_arun_and_run_under_asyncio_as_in_a_notebook(tmp_path):
    async def notebook_cell():
        awaited = await legato.arun(HELLO, workspace=tmp_path)
        blocking = legato.run(HELLO, {"who": "sync"}, workspace=tmp_path)  # a cell without await
        return awaited, blocking

    awaited, blocking = asyncio.run(notebook_cell())
    assert awaited.statuses == {"greet": "SUCCEEDED", "after": "SUCCEEDED"}
    assert blocking.steps["greet"].logs == "hello sync\n"


def test_cancelling_arun_under_asyncio_stops_the_instance(tmp_path):
    from legato.plugins.memory import MemoryStorage

    slow = {"workflow": {"id": "slow", "steps": [{"step": {"id": "nap", "type": "sleep", "params": {"seconds": 600}}}]}}
    store = MemoryStorage()
    running = threading.Event()

    def observer(event):
        if event.step_id == "nap" and event.status == "RUNNING":
            running.set()

    async def main():
        task = asyncio.create_task(legato.arun(slow, store=store, workspace=tmp_path, observer=observer))
        await asyncio.get_running_loop().run_in_executor(None, running.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())

    async def final():
        (record,) = await store.list_instances()
        attempts = await store.get_attempts(record.instance_id)
        return record.status.value, [a.status.value for a in attempts]

    assert trio.run(final) == ("STOPPED", ["STOPPED"])


def test_importing_legato_loads_neither_the_engine_nor_trio_nor_sqlalchemy():
    code = ("import sys, legato\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('trio', 'sqlalchemy', 'sqlmodel', 'celpy', "
            "'pydantic', 'alembic', 'duckdb', 'docker', 'papermill') or m in ('legato.engine', 'legato.cel', "
            "'legato.definition', 'legato.api', 'legato.plugin_manager')]\n"
            "print(heavy)\n"
            "legato.run\n"
            "print('legato.api' in sys.modules, 'legato.engine' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "True False"]


def test_statuses_runs_in_a_temporary_directory_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert statuses(ETL, {"threshold": 10}) == {"extract": "SUCCEEDED", "validate": "SUCCEEDED",
                                                "load": "UNSATISFIED", "alert": "SUCCEEDED", "report": "SUCCEEDED"}
    assert list(tmp_path.iterdir()) == []


def test_the_legato_run_fixture(legato_run, tmp_path):
    instance = legato_run(HELLO, {"who": "fixture"})
    assert instance.statuses == {"greet": "SUCCEEDED", "after": "UNSATISFIED"}
    assert (tmp_path / "runs" / instance.id).is_dir()


def test_what_a_definition_says_but_legato_does_not_enforce_yet_is_a_warning(tmp_path):
    """The CLI's "warning:" lines are Python warnings here."""
    document = {**HELLO, "workflow": {**HELLO["workflow"], "tags": [{"name": "team", "permit": 1}]}}
    with pytest.warns(legato.DefinitionWarning, match="/workflow/tags/0/permit: a permit on a workflow's tag "
                                                      "limits nothing"):
        instance = legato.run(document, workspace=tmp_path)
    assert instance.succeeded
