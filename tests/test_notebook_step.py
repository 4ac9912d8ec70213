"""The ``notebook`` step type (papermill), through the real engine, plus the conformance suite.

Every test that runs a notebook needs papermill and a ``python3`` Jupyter kernel: without them it
is skipped (failed under CI) through ``require_component``. A kernel takes about a second to
start, so the workflows here run several notebooks at once where they can.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from legato import StepContext
from legato.conformance import StepTypeSuite
from legato.conformance.suites import _descendants
from legato.definition import DefinitionError
from legato.engine import Engine
from legato.storage import open_storage

from .conftest import alive, fatal_as, kernel_problem, require_component

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
NASTY = "$(touch /tmp/legato-pwned); DROP TABLE t;--'\"\\n\n\t{text} `id` \\\" é ✓ \x01"
NO_RETRY = {"error_retry_limit": 0, "platform_retry_limit": 0}


@pytest.fixture
def kernel():
    require_component("Jupyter kernel", kernel_problem())


def notebook_step(sid: str, name: str | Path, to=None, **params) -> dict:
    path = name if isinstance(name, Path) else NOTEBOOKS / name
    body = {"id": sid, "type": "notebook", "params": {"input_path": str(path), **params}, "retry_policy": NO_RETRY}
    if to is not None:
        body["transition"] = {"successors": to}
    return {"step": body}


def workflow(*steps, params=None) -> dict:
    doc = {"workflow": {"id": "nb", "steps": list(steps)}}
    if params:
        doc["workflow"]["params"] = params
    return doc


async def execute(tmp_path: Path, doc: dict, params=None):
    engine = Engine(open_storage("memory://"), workspace=tmp_path / "runs")
    instance = await engine.execute(engine.load(doc), params)
    attempts = {a.step_id: a for a in await engine.storage.get_attempts(instance.instance_id)}
    logs = await engine.storage.get_logs(instance.instance_id)
    return instance, attempts, logs


def log_of(logs, step_id: str, stream: str | None = None) -> str:
    return "".join(c.text for c in logs if c.step_id == step_id and (stream is None or c.stream == stream))


# -- through the engine ------------------------------------------------------------------------


async def test_parameters_arrive_as_data_and_outputs_flow_downstream(tmp_path, kernel):
    doc = workflow(
        notebook_step("nb", "params_outputs.ipynb",
                      to={"reader": "steps.nb.outputs.x == 7 && steps.nb.outputs.rows == 6",
                          "never": "steps.nb.outputs.x != 7"},
                      # a step param becomes a parameter; `parameters` overrides it; a Python keyword
                      # is not a parameter (and does not break the injected cell)
                      rows=1, parameters={"rows": 3}, **{"lambda": "ignored"},
                      # relative to the working directory; braces are not a papermill path template
                      output_path="reports/{text}.ipynb"),
        {"step": {"id": "reader", "type": "noop", "params": {
            "got": {"type": "STRING", "expression": "steps.nb.outputs.text"},
            "outputs": {"type": "MAP", "expression": "steps.nb.outputs"}}}},
        {"step": {"id": "never", "type": "noop"}},
        params={"text": {"type": "STRING", "value": "default"}, "config": {"nested": [1, "two", None, True]}},
    )
    if os.path.exists("/tmp/legato-pwned"):
        os.unlink("/tmp/legato-pwned")
    instance, attempts, logs = await execute(tmp_path, doc, {"text": NASTY})

    nb = attempts["nb"]
    assert nb.status.value == "SUCCEEDED", (nb.message, log_of(logs, "nb"))
    assert instance.status.value == "SUCCEEDED"
    # byte for byte, through papermill's injected cell and back out through legato.notebook.output
    assert nb.outputs["text"] == NASTY
    assert not os.path.exists("/tmp/legato-pwned")
    assert nb.outputs["rows"] == 6
    assert nb.outputs["config"] == {"nested": [1, "two", None, True]}
    # written to $LEGATO_OUTPUT directly: key=value and JSON lines
    assert nb.outputs["direct"] == "yes" and nb.outputs["x"] == 7
    # the executed notebook is an output, and it exists with the injected parameters
    executed = Path(nb.outputs["output_notebook"])
    assert executed == tmp_path / "runs" / instance.instance_id / "reports" / "{text}.ipynb"
    assert executed.is_file()
    cells = json.loads(executed.read_text())["cells"]
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in cells)
    assert "rows is 3" in log_of(logs, "nb", "stdout")
    # downstream: the condition chose `reader`, which read the outputs in its params
    assert attempts["reader"].status.value == "SUCCEEDED"
    assert attempts["reader"].params["got"] == NASTY
    assert attempts["reader"].params["outputs"]["x"] == 7
    assert "never" not in attempts or attempts["never"].status.value == "UNSATISFIED"
    assert nb.handle["kernel_pgid"] > 1 and not alive(nb.handle["kernel_pid"])


async def test_failures_are_classified(tmp_path, kernel):
    not_a_notebook = tmp_path / "notes.ipynb"
    not_a_notebook.write_text("just some text\n")
    doc = workflow(
        notebook_step("raises", "raises.ipynb"),
        notebook_step("dies", "dies.ipynb"),
        notebook_step("missing", "no-such-notebook.ipynb"),
        notebook_step("nokernel", "raises.ipynb", kernel_name="no-such-kernel"),
        notebook_step("garbage", not_a_notebook),
        notebook_step("slow_cell", "slow.ipynb", cell_timeout=1),
    )
    instance, attempts, logs = await execute(tmp_path, doc)
    assert instance.status.value == "FAILED"

    raises = attempts["raises"]
    assert fatal_as(raises, "USER_FAILED"), raises.message
    # the cell's 1-based position in the input notebook (the injected cell does not count), its first
    # line and the exception
    assert raises.message.startswith("cell 4 (`raise ValueError('bad')`) raised ValueError: bad"), raises.message
    assert Path(raises.outputs["output_notebook"]).is_file()
    assert "before the failure" in log_of(logs, "raises", "stdout")
    assert "never printed" not in log_of(logs, "raises")

    dies = attempts["dies"]
    assert fatal_as(dies, "PLATFORM_FAILED"), dies.message
    assert dies.message.startswith("the kernel died while running cell 2"), dies.message
    assert "about to die" in log_of(logs, "dies", "stdout")

    missing = attempts["missing"]
    assert fatal_as(missing, "USER_FAILED"), missing.message
    assert "no-such-notebook.ipynb" in missing.message and "does not exist" in missing.message

    nokernel = attempts["nokernel"]
    assert fatal_as(nokernel, "PLATFORM_FAILED"), nokernel.message
    assert "no Jupyter kernel named 'no-such-kernel'" in nokernel.message and "python3" in nokernel.message

    garbage = attempts["garbage"]
    assert garbage.status.value == "FATALLY_FAILED"
    assert str(not_a_notebook) in garbage.message and "is not a Jupyter notebook" in garbage.message

    assert Path(attempts["raises"].outputs["output_notebook"]).name == "output.ipynb"  # the default

    slow = attempts["slow_cell"]
    assert fatal_as(slow, "USER_FAILED"), slow.message
    assert slow.message.startswith("cell 1 (`print('started', flush=True)`) did not finish within cell_timeout=1s")

    for attempt in attempts.values():
        for name in ("pid", "kernel_pid"):
            pid = (attempt.handle or {}).get(name)
            assert pid is None or not alive(pid), f"{attempt.step_id}: {name} {pid} survived the step"


async def test_output_streams_while_running_and_cancellation_kills_papermill_and_the_kernel(tmp_path, kernel):
    engine = Engine(open_storage("memory://"), workspace=tmp_path / "runs")
    definition = engine.load(workflow(notebook_step("nb", "slow.ipynb")))
    before = _descendants()
    instance, _ = await engine.start(definition)
    async with trio.open_nursery() as nursery:
        run = await nursery.start(lambda task_status: engine.run(definition, instance, task_status=task_status))
        with trio.fail_after(20):  # the cell prints, then sleeps 30 s: the print is in the log before it ends
            while "started" not in log_of(await engine.storage.get_logs(instance.instance_id), "nb", "stdout"):
                await trio.sleep(0.05)
            while not (await engine.storage.get_attempts(instance.instance_id))[0].handle.get("kernel_pid"):
                await trio.sleep(0.05)
        handle = (await engine.storage.get_attempts(instance.instance_id))[0].handle
        assert alive(handle["pid"]) and alive(handle["kernel_pid"])
        assert handle["kernel_pid"] in _descendants()
        run.stop("stopped by the test")
    attempt = (await engine.storage.get_attempts(instance.instance_id))[0]
    assert attempt.status.value == "STOPPED"
    # the cell sleeps 30 s and the next one prints: the stop cut the notebook short
    assert "never printed" not in log_of(await engine.storage.get_logs(instance.instance_id), "nb", "stdout")
    with trio.move_on_after(15):  # a hang guard
        while alive(handle["pid"]) or alive(handle["kernel_pid"]) or _descendants() - before:
            await trio.sleep(0.02)
    assert not alive(handle["pid"]), "papermill survived the cancellation"
    assert not alive(handle["kernel_pid"]), "the kernel survived the cancellation"
    assert not _descendants() - before
    assert not (engine.workspace / instance.instance_id / ".legato" / "nb.1" / "jupyter-runtime").exists()


# -- without a kernel ------------------------------------------------------------------------


def test_parameter_names_that_are_not_identifiers_are_refused_at_load():
    engine = Engine(open_storage("memory://"))
    with pytest.raises(DefinitionError) as info:
        engine.load(workflow(notebook_step("nb", "x.ipynb", parameters={"ok": 1, "x = 1; import os": 2})))
    assert "/workflow/steps/0/step/params/parameters" in [p.pointer for p in info.value.problems]
    with pytest.raises(DefinitionError):
        engine.load(workflow(notebook_step("nb", "x.ipynb", parameters={"class": 1})))
    with pytest.raises(DefinitionError):
        engine.load(workflow(notebook_step("nb", "x.ipynb", cell_timeout=0)))
    with pytest.raises(DefinitionError):
        engine.load(workflow(notebook_step("nb", "x.ipynb", env={"A B": "x"})))


def test_the_helper_writes_json_lines(tmp_path, monkeypatch):
    from legato import notebook
    from legato.plugins.bash import parse_outputs

    monkeypatch.delenv("LEGATO_OUTPUT", raising=False)
    with pytest.raises(RuntimeError, match=r"needs \$LEGATO_OUTPUT"):
        notebook.output("x", 1)
    target = tmp_path / "out"
    monkeypatch.setenv("LEGATO_OUTPUT", str(target))

    class Scalar:  # a NumPy scalar's shape
        def item(self):
            return 4

    notebook.output("a", {"k": [1, "é\n"]})
    notebook.output("n", Scalar())
    notebook.output("a", "later wins")
    with pytest.raises(TypeError, match="output 'bad': object is not JSON"):
        notebook.output("bad", object())
    with pytest.raises(ValueError, match="output 'nan'"):
        notebook.output("nan", float("nan"))
    assert parse_outputs(target.read_text(encoding="utf-8")) == {"a": "later wins", "n": 4}
    # cheap to import inside a kernel
    proc = subprocess.run([sys.executable, "-c", "import sys, legato.notebook; "
                           "print(sorted(m for m in ('trio', 'pydantic', 'papermill') if m in sys.modules))"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_reap_kills_only_this_attempts_groups(tmp_path):
    from legato.plugins.notebook import Notebook

    def ctx(attempt):
        return StepContext(instance_id="i", workflow_id="w", step_id="s", attempt=attempt, params={},
                           config=None, workflow_params={}, workspace=tmp_path, definition_dir=None,
                           log=lambda *a: None, record_handle=None)

    def spawn(key):
        env = {**os.environ, "LEGATO_IDEMPOTENCY_KEY": key}
        return subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)

    papermill, kernel, other = spawn("i:s:1"), spawn("i:s:1"), spawn("i:s:2")
    try:
        Notebook().reap(ctx(1), {"pid": papermill.pid, "pgid": papermill.pid, "kernel_pgid": kernel.pid})
        Notebook().reap(ctx(1), {"pgid": other.pid})  # not this attempt's: left alone
        Notebook().reap(ctx(1), "garbage")
        assert papermill.wait(5) == -signal.SIGKILL and kernel.wait(5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for proc in (papermill, kernel, other):
            proc.kill()
            proc.wait()


def test_unavailable_without_papermill(monkeypatch):
    from legato.plugins.notebook import Notebook

    assert Notebook.unavailable() is None or kernel_problem() is not None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "papermill" else real(name, *a))
    assert "pip install 'legato[notebook]'" in Notebook.unavailable()


# -- conformance -----------------------------------------------------------------------------


class TestNotebookConformance(StepTypeSuite):
    profile = "notebook"  # as published in plugins/profiles.py

    @pytest.fixture(autouse=True)
    def _kernel(self):
        require_component("Jupyter kernel", kernel_problem())
