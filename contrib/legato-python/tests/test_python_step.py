"""The ``python`` step type, run through the real engine (memory storage)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from legato import StepContext
from legato.definition import DefinitionError
from legato.engine import Engine
from legato.storage import open_storage

from legato_python.step import PythonStep

HERE = Path(__file__).resolve().parent
PAYLOAD = "$(touch MARKER); DROP TABLE t;--'\" `id` $HOME \\ \n\t ünïcødé ☃ %s {0} {}"


# -- harness ---------------------------------------------------------------------------------


def step(callable_: str, id: str = "s", retries: int = 0, **params) -> dict:
    """A python step calling ``callable_`` from tests/callables.py."""
    return {"step": {
        "id": id, "type": "python",
        "params": {"callable": callable_, "sys_path": [str(HERE)], **params},
        "retry_policy": {"error_retry_limit": retries, "platform_retry_limit": retries},
    }}


def exhausted(attempt, failure: str) -> bool:
    """The attempt ended FATALLY_FAILED as a ``failure`` (USER_FAILED, PLATFORM_FAILED) with no retry
    of that class left: the engine names the class in the message (Maestro's StepRuntimeManager)."""
    return attempt.status.value == "FATALLY_FAILED" and f"({failure}, no " in attempt.message


def workflow(*steps: dict) -> dict:
    return {"workflow": {"id": "python-step", "steps": list(steps)}}


def make_engine(tmp_path: Path) -> Engine:
    return Engine(open_storage("memory://"), workspace=tmp_path / "runs")


async def execute(tmp_path: Path, doc):
    """Run ``doc`` to its end: (instance, attempts by step id (the last one), logs by stream)."""
    engine = make_engine(tmp_path)
    instance = await engine.execute(engine.load(doc))
    attempts = {}
    for attempt in await engine.storage.get_attempts(instance.instance_id):
        attempts[attempt.step_id] = attempt  # in attempt order: the last one wins
    logs: dict[str, str] = {"stdout": "", "stderr": ""}
    for chunk in await engine.storage.get_logs(instance.instance_id):
        logs[chunk.stream] += chunk.text
    return instance, attempts, logs


async def run_then_stop(tmp_path: Path, doc, during) -> dict:
    """Start ``doc``, call ``await during(engine, run)`` (which waits until the callable runs),
    then stop the instance. Returns how long the stop took and the attempts."""
    # `during` waits for a sign of life from the callable rather than for the RUNNING event: the
    # kernel commits RUNNING with the next batch, which for a silent step is only when it ends.
    engine = make_engine(tmp_path)
    definition = engine.load(doc)
    instance, _ = await engine.start(definition)
    async with trio.open_nursery() as nursery:
        run = await nursery.start(lambda task_status: engine.run(definition, instance, task_status=task_status))
        await during(engine, run)
        stop_called = time.monotonic()
        run.stop("stopped by the test")
    took = time.monotonic() - stop_called
    attempts = {a.step_id: a for a in await engine.storage.get_attempts(instance.instance_id)}
    return {"took": took, "attempts": attempts}


async def read_pids(path: Path, timeout: float = 10.0) -> list[int]:
    """The pids a callable wrote to ``path`` (it writes them atomically once it runs)."""
    with trio.fail_after(timeout):
        while not path.exists():
            await trio.sleep(0.02)
    return [int(p) for p in path.read_text().split()]


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def all_gone(pids, timeout: float = 15.0) -> bool:
    """Whether every pid is gone within ``timeout``: a SIGKILLed process takes a moment to die."""
    with trio.move_on_after(timeout):
        while not all(gone(p) for p in pids):
            await trio.sleep(0.01)
    return all(gone(p) for p in pids)


# -- outputs ---------------------------------------------------------------------------------


@pytest.mark.trio
async def test_returned_dict_becomes_outputs_and_picks_the_branch(tmp_path):
    s = step("callables:totals", x=5)
    s["step"]["transition"] = {"successors": {"big": "steps.s.outputs.x > 3", "small": "steps.s.outputs.x <= 3"}}
    doc = workflow(s, {"step": {"id": "big", "type": "noop"}}, {"step": {"id": "small", "type": "noop"}})
    instance, attempts, _ = await execute(tmp_path, doc)
    assert instance.status.value == "SUCCEEDED"
    assert attempts["s"].status.value == "SUCCEEDED", attempts["s"].message
    assert attempts["s"].outputs == {"x": 5, "name": "sales", "nested": {"rows": [1, 2, 3]}}
    assert attempts["big"].status.value == "SUCCEEDED"
    assert attempts["small"].status.value == "UNSATISFIED"
    handle = attempts["s"].handle
    assert set(handle) == {"pid", "pgid"} and handle["pid"] == handle["pgid"]


@pytest.mark.trio
@pytest.mark.parametrize(("target", "outputs"), [
    ("callables:answer", {"result": 42}),
    ("callables:a_list", {"result": ["a", 1, None]}),
    ("callables:nothing", {}),
])
async def test_non_dict_returns(tmp_path, target, outputs):
    _, attempts, _ = await execute(tmp_path, workflow(step(target)))
    assert attempts["s"].status.value == "SUCCEEDED", attempts["s"].message
    assert attempts["s"].outputs == outputs


@pytest.mark.trio
async def test_async_function_is_awaited(tmp_path):
    _, attempts, _ = await execute(tmp_path, workflow(step("callables:fetch", delay=0.02)))
    assert attempts["s"].status.value == "SUCCEEDED", attempts["s"].message
    assert attempts["s"].outputs == {"async": True, "delay": 0.02}


@pytest.mark.trio
async def test_unserialisable_output_is_a_user_error_naming_the_key(tmp_path):
    _, attempts, _ = await execute(tmp_path, workflow(step("callables:returns_a_set")))
    assert exhausted(attempts["s"], "USER_FAILED"), attempts["s"].message
    assert "'bad'" in attempts["s"].message and "JSON" in attempts["s"].message


# -- params ----------------------------------------------------------------------------------


@pytest.mark.trio
async def test_params_arrive_as_kwargs_byte_for_byte(tmp_path):
    marker = tmp_path / "pwned"
    payload = PAYLOAD.replace("MARKER", str(marker))
    nested = {"q": payload, "list": [payload, 1, 2.5, True, None], "map": {payload: payload}}
    doc = workflow(step("callables:echo", payload=payload, nested=nested, clash="from params",
                        kwargs={"clash": "from kwargs", "python": payload}))
    _, attempts, _ = await execute(tmp_path, doc)
    assert attempts["s"].status.value == "SUCCEEDED", attempts["s"].message
    # The config keys (callable, sys_path, kwargs) are not arguments; `kwargs` wins a clash and
    # can pass an argument named like a config key.
    assert attempts["s"].outputs["received"] == {
        "payload": payload, "nested": nested, "clash": "from kwargs", "python": payload}
    assert not marker.exists(), "a param was executed as code"
    leftovers = sorted(p.name for p in (tmp_path / "runs").rglob("python-*.json"))
    assert not leftovers, f"the request (params, maybe secrets) or result outlived the step: {leftovers}"


@pytest.mark.trio
async def test_legato_environment_variables(tmp_path):
    instance, attempts, _ = await execute(tmp_path, workflow(step("callables:environment")))
    iid = instance.instance_id
    ours = ("LEGATO_INSTANCE_ID", "LEGATO_STEP_ID", "LEGATO_ATTEMPT", "LEGATO_IDEMPOTENCY_KEY")
    # Only these four: the kernel's own environment (LEGATO_STORE, …) is inherited as it is.
    assert {k: v for k, v in attempts["s"].outputs.items() if k in ours} == {
        "LEGATO_INSTANCE_ID": iid, "LEGATO_STEP_ID": "s", "LEGATO_ATTEMPT": "1",
        "LEGATO_IDEMPOTENCY_KEY": f"{iid}:s:1"}


@pytest.mark.trio
async def test_signature_mismatch_is_fatal(tmp_path):
    _, attempts, _ = await execute(tmp_path, workflow(step("callables:needs_a_date", retries=3, day="monday")))
    assert attempts["s"].status.value == "FATALLY_FAILED"
    assert attempts["s"].attempt == 1
    assert "day" in attempts["s"].message


@pytest.mark.trio
async def test_paths_resolve_against_the_definition_and_nothing_else_joins_sys_path(tmp_path):
    (tmp_path / "lib").mkdir()
    shutil.copy(HERE / "callables.py", tmp_path / "lib" / "mycallables.py")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shadow.py").write_text("X = 1\n")
    doc = workflow(
        {"step": {"id": "s", "type": "python", "transition": {"successors": ["t"]},
                  "params": {"callable": "mycallables:where", "sys_path": ["lib"], "working_dir": "data"}}},
        # The working directory is not on sys.path: `shadow` next to it cannot be imported.
        {"step": {"id": "t", "type": "python",
                  "params": {"callable": "shadow:X", "sys_path": ["lib"], "working_dir": "data"}}},
    )
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(doc))
    _, attempts, _ = await execute(tmp_path, path)
    outputs = attempts["s"].outputs
    assert outputs["cwd"] == str(tmp_path / "data")
    assert outputs["sys_path"][0] == str(tmp_path / "lib")
    assert str(tmp_path / "data") not in outputs["sys_path"]
    assert not any(p.endswith("legato_python") for p in outputs["sys_path"])
    assert attempts["t"].status.value == "FATALLY_FAILED"
    assert "no module named 'shadow'" in attempts["t"].message


@pytest.mark.trio
async def test_another_interpreter_without_legato(tmp_path):
    other = shutil.which("python3", path="/usr/bin:/bin")
    if other is None or os.path.realpath(other) == os.path.realpath(sys.executable):
        pytest.skip("no second Python interpreter on this machine")
    _, attempts, _ = await execute(tmp_path, workflow(step("callables:where", python=other)))
    assert attempts["s"].status.value == "SUCCEEDED", attempts["s"].message
    assert attempts["s"].outputs["executable"] == other


@pytest.mark.trio
async def test_missing_interpreter_is_fatal(tmp_path):
    _, attempts, _ = await execute(tmp_path, workflow(step("callables:answer", python=str(tmp_path / "no-python"))))
    assert attempts["s"].status.value == "FATALLY_FAILED"
    assert "no-python" in attempts["s"].message


# -- failures --------------------------------------------------------------------------------


@pytest.mark.trio
async def test_exception_is_user_failed_with_the_traceback_in_the_log(tmp_path):
    _, attempts, logs = await execute(tmp_path, workflow(step("callables:boom", reason="no rows")))
    attempt = attempts["s"]
    assert exhausted(attempt, "USER_FAILED"), attempt.message
    assert attempt.message == "ValueError: no rows: the callable raised (USER_FAILED, no error retry left: FATALLY_FAILED)"
    assert "Traceback (most recent call last)" in logs["stderr"]
    assert "callables.py" in logs["stderr"] and 'raise ValueError(f"{reason}: the callable raised")' in logs["stderr"]
    assert "child.py" not in logs["stderr"], "the traceback should start at the user's code"


@pytest.mark.trio
@pytest.mark.parametrize(("target", "says"), [
    ("no_such_module_here:main", "no module named 'no_such_module_here'"),
    ("callables:no_such_function", "'callables' has no attribute 'no_such_function'"),
])
async def test_missing_module_or_attribute_is_fatally_failed(tmp_path, target, says):
    _, attempts, _ = await execute(tmp_path, workflow(step(target, retries=3)))
    attempt = attempts["s"]
    assert attempt.status.value == "FATALLY_FAILED"
    assert attempt.attempt == 1, "retrying a missing import cannot help"
    assert says in attempt.message


@pytest.mark.parametrize("bad", [
    "callables.echo", "callables:", ":echo", "callables:echo()", "os.system('x'):f", "a b:c", "1mod:f", "",
])
def test_invalid_callable_is_refused_at_load(tmp_path, bad):
    engine = make_engine(tmp_path)
    with pytest.raises(DefinitionError) as info:
        engine.load(workflow(step(bad)))
    pointers = [p.pointer for p in info.value.problems]
    assert "/workflow/steps/0/step/params/callable" in pointers, [str(p) for p in info.value.problems]


def test_missing_callable_is_refused_at_load(tmp_path):
    engine = make_engine(tmp_path)
    with pytest.raises(DefinitionError) as info:
        engine.load(workflow({"step": {"id": "s", "type": "python", "params": {"x": 1}}}))
    assert "/workflow/steps/0/step/params/callable" in [p.pointer for p in info.value.problems]


# -- while it runs ---------------------------------------------------------------------------


@pytest.mark.trio
async def test_print_streams_to_the_log_while_running(tmp_path):
    pidfile = tmp_path / "pid"

    async def during(engine, run):
        await read_pids(pidfile)
        with trio.fail_after(5):
            while "hello from the child" not in "".join(c.text for c in await engine.storage.get_logs(run.iid)):
                await trio.sleep(0.02)
        attempt = (await engine.storage.get_attempts(run.iid))[0]
        assert attempt.status.value == "RUNNING"

    facts = await run_then_stop(tmp_path, workflow(step("callables:chatty", pidfile=str(pidfile))), during)
    assert facts["attempts"]["s"].status.value == "STOPPED"


@pytest.mark.trio
async def test_cancellation_ends_quickly_and_kills_the_child(tmp_path):
    pidfile = tmp_path / "pid"
    pids = []

    async def during(engine, run):
        pids.extend(await read_pids(pidfile))

    facts = await run_then_stop(tmp_path, workflow(step("callables:sleepy", pidfile=str(pidfile))), during)
    assert facts["took"] < 30, f"stopping took {facts['took']:.2f}s"  # a hang guard: the callable sleeps 60 s
    assert facts["attempts"]["s"].status.value == "STOPPED"
    assert await all_gone(pids), f"still running: {[p for p in pids if not gone(p)]}"


@pytest.mark.trio
async def test_cancellation_kills_grandchildren(tmp_path):
    pidfile = tmp_path / "pid"
    pids = []

    async def during(engine, run):
        pids.extend(await read_pids(pidfile))

    facts = await run_then_stop(tmp_path, workflow(step("callables:spawn_grandchild", pidfile=str(pidfile))), during)
    assert facts["took"] < 30, f"stopping took {facts['took']:.2f}s"  # a hang guard: the callable sleeps 60 s
    assert len(pids) == 2
    assert await all_gone(pids), f"still running: {[p for p in pids if not gone(p)]}"


@pytest.mark.trio
async def test_leftover_grandchild_is_killed_after_the_callable_returns(tmp_path):
    pidfile = tmp_path / "pid"
    _, attempts, _ = await execute(tmp_path, workflow(step("callables:leave_grandchild", pidfile=str(pidfile))))
    assert attempts["s"].status.value == "SUCCEEDED", attempts["s"].message
    _, grandchild = [int(p) for p in pidfile.read_text().split()]
    assert await all_gone([grandchild])


@pytest.mark.trio
async def test_cancellation_lets_finally_blocks_run(tmp_path):
    pidfile, marker = tmp_path / "pid", tmp_path / "cleaned"

    async def during(engine, run):
        await read_pids(pidfile)

    facts = await run_then_stop(tmp_path, workflow(step("callables:cleans_up", pidfile=str(pidfile),
                                                        marker=str(marker))), during)
    assert facts["attempts"]["s"].status.value == "STOPPED"
    assert marker.read_text() == "cleaned up", "SIGTERM should reach the callable as KeyboardInterrupt"


@pytest.mark.trio
async def test_cancellation_escalates_to_sigkill(tmp_path):
    pidfile = tmp_path / "pid"
    pids = []

    async def during(engine, run):
        pids.extend(await read_pids(pidfile))

    facts = await run_then_stop(tmp_path, workflow(step("callables:ignores_sigterm", pidfile=str(pidfile))), during)
    # it waited out the 1 s grace, then killed (the upper bound is a hang guard: the callable sleeps 60 s)
    assert 0.9 < facts["took"] < 30, f"stopping took {facts['took']:.2f}s (1 s of grace, then SIGKILL)"
    assert await all_gone(pids)


@pytest.mark.trio
@pytest.mark.parametrize(("target", "params", "status", "says"), [
    ("callables:exits", {"code": 0}, "SUCCEEDED", ""),
    ("callables:exits", {"code": 3}, "USER_FAILED", "SystemExit: 3"),
    ("callables:hard_exit", {}, "USER_FAILED", "without reporting a result"),
    ("callables:killed", {}, "USER_FAILED", "killed by signal SIGKILL before reporting a result: about to die"),
])
async def test_how_the_process_ends(tmp_path, target, params, status, says):
    """``status`` is how the attempt ended; with no retry, a user failure ends FATALLY_FAILED naming it."""
    _, attempts, _ = await execute(tmp_path, workflow(step(target, **params)))
    if status == "SUCCEEDED":
        assert attempts["s"].status.value == status, attempts["s"].message
    else:
        assert exhausted(attempts["s"], status), attempts["s"].message
    assert says in attempts["s"].message


# -- reaping after a crash -------------------------------------------------------------------


def _context(tmp_path: Path, idempotency_attempt: int = 1) -> StepContext:
    async def record_handle(handle):
        pass

    return StepContext(
        instance_id="inst1", workflow_id="wf", step_id="s", attempt=idempotency_attempt, params={},
        config=None, workflow_params={}, workspace=tmp_path, definition_dir=None,
        log=lambda stream, text: None, record_handle=record_handle,
    )


@pytest.mark.trio
async def test_reap_kills_only_this_attempts_process_group(tmp_path):
    ctx = _context(tmp_path)

    def spawn(key: str) -> subprocess.Popen:
        env = {**os.environ, "LEGATO_IDEMPOTENCY_KEY": key}
        return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)

    ours, other = spawn(ctx.idempotency_key), spawn("inst1:s:2")
    try:
        step_type = PythonStep()
        step_type.reap(ctx, {"pid": ours.pid, "pgid": ours.pid})
        step_type.reap(ctx, {"pid": other.pid, "pgid": other.pid})
        step_type.reap(ctx, {"pgid": "not a pid"})  # malformed handles are ignored
        step_type.reap(ctx, None)
        with trio.fail_after(2):
            while ours.poll() is None:
                await trio.sleep(0.01)
        assert ours.returncode == -9
        assert other.poll() is None, "reap killed a process of another attempt"
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()
