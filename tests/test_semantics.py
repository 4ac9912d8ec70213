"""Maestro's runtime semantics, pinned with small workflows (DESIGN §3).

Each case is a definition and the final statuses a user would see.
"""

from __future__ import annotations

import os
import time

import pytest
import trio
import trio.testing

from legato.states import StepStatus

from . import scripted
from .conftest import alive


def step(sid, type="noop", to=None, **fields):
    body = {"id": sid, "type": type, **fields}
    if to is not None:
        body["transition"] = {"successors": to}
    return {"step": body}


def wf(*steps, params=None, properties=None, **extra):
    doc = {"workflow": {"id": "t", "steps": list(steps), **extra}}
    if params:
        doc["workflow"]["params"] = params
    if properties:
        doc["properties"] = properties
    return doc


def out(sid, outputs, to=None, **fields):
    return step(sid, "noop", to, params={"outputs": outputs}, **fields)


def scripted_step(sid, results, to=None, **fields):
    params = fields.pop("params", {})
    return step(sid, "scripted", to, params={"results": results, **params}, **fields)


NO_BACKOFF = {"backoff": {"type": "fixed", "base": 0}}

# definition -> (instance status, final status of each step; None = never created)
TABLE = {
    "chain": (
        wf(step("a", to=["b"]), step("b", to=["c"]), step("c")),
        "SUCCEEDED", {"a": "SUCCEEDED", "b": "SUCCEEDED", "c": "SUCCEEDED"},
    ),
    "outputs choose a branch": (
        wf(out("a", {"n": 5}, to={"big": "steps.a.outputs.n > 3", "small": "steps.a.outputs.n <= 3"}),
           step("big"), step("small")),
        "SUCCEEDED", {"a": "SUCCEEDED", "big": "SUCCEEDED", "small": "UNSATISFIED"},
    ),
    "satisfied-any in a diamond": (
        wf(step("a", to={"b": "false", "c": "true"}), step("b", to=["d"]), step("c", to=["d"]), step("d")),
        "SUCCEEDED", {"a": "SUCCEEDED", "b": "UNSATISFIED", "c": "SUCCEEDED", "d": "SUCCEEDED"},
    ),
    "UNSATISFIED propagates through a diamond": (
        wf(step("a", to={"b": "false", "c": "false"}), step("b", to=["d"]), step("c", to=["d"]),
           step("d", to=["e"]), step("e")),
        "SUCCEEDED",
        {"a": "SUCCEEDED", "b": "UNSATISFIED", "c": "UNSATISFIED", "d": "UNSATISFIED", "e": "UNSATISFIED"},
    ),
    "an unsatisfied edge counts as false, another true edge still satisfies": (
        wf(step("a", to={"b": "false", "c": "true"}), step("b", to=["d"]), step("c", to={"d": "false"}), step("d")),
        "SUCCEEDED", {"a": "SUCCEEDED", "b": "UNSATISFIED", "c": "SUCCEEDED", "d": "UNSATISFIED"},
    ),
    "failure leaves descendants NOT_CREATED, other branches finish": (
        wf(step("a", to=["bad", "ok"]),
           scripted_step("bad", ["USER_ERROR"], to=["after_bad"], retry_policy={"error_retry_limit": 0}),
           step("after_bad"), scripted_step("ok", [{"sleep": 0.05}], to=["after_ok"]), step("after_ok")),
        "FAILED",
        {"a": "SUCCEEDED", "bad": "FATALLY_FAILED", "after_bad": None, "ok": "SUCCEEDED", "after_ok": "SUCCEEDED"},
    ),
    "IGNORE_FAILURE continues downstream": (
        wf(scripted_step("a", ["FATAL_ERROR"], to=["b"], failure_mode="IGNORE_FAILURE"), step("b")),
        "SUCCEEDED", {"a": "COMPLETED_WITH_ERROR", "b": "SUCCEEDED"},
    ),
    "a join waits for a failed predecessor forever: NOT_CREATED": (
        wf(step("a", to=["x", "y"]), scripted_step("x", ["FATAL_ERROR"], to=["j"]), step("y", to=["j"]), step("j")),
        "FAILED", {"a": "SUCCEEDED", "x": "FATALLY_FAILED", "y": "SUCCEEDED", "j": None},
    ),
    "FAIL_IMMEDIATELY stops a running sibling": (
        wf(step("a", to=["bad", "slow"]),
           scripted_step("bad", [{"sleep": 0.05, "then": "FATAL_ERROR"}], failure_mode="FAIL_IMMEDIATELY"),
           step("slow", "sleep", to=["after"], params={"seconds": 30}), step("after")),
        "FAILED", {"a": "SUCCEEDED", "bad": "FATALLY_FAILED", "slow": "STOPPED", "after": None},
    ),
    "FAIL_AFTER_RUNNING lets a running sibling finish": (
        wf(step("a", to=["bad", "slow"]),
           scripted_step("bad", ["FATAL_ERROR"]),
           step("slow", "sleep", params={"seconds": 0.2})),
        "FAILED", {"a": "SUCCEEDED", "bad": "FATALLY_FAILED", "slow": "SUCCEEDED"},
    ),
    "a plugin that raises is INTERNALLY_FAILED, even with IGNORE_FAILURE": (
        wf(scripted_step("a", ["RAISE", "DONE"], to=["b"], failure_mode="IGNORE_FAILURE"), step("b")),
        "FAILED", {"a": "INTERNALLY_FAILED", "b": None},
    ),
    "a plugin that returns garbage is INTERNALLY_FAILED": (
        wf(scripted_step("a", ["GARBAGE"])), "FAILED", {"a": "INTERNALLY_FAILED"},
    ),
    "a condition that fails to evaluate fails its source, INTERNALLY_FAILED, located": (
        wf(out("a", {"n": 1}, to={"b": "steps.a.outputs.missing > 1"}), step("b")),
        "FAILED", {"a": "INTERNALLY_FAILED", "b": None},
    ),
    "a step param that fails to evaluate is INTERNALLY_FAILED": (
        wf(step("a", params={"x": {"type": "LONG", "expression": "1 / 0"}})),
        "FAILED", {"a": "INTERNALLY_FAILED"},
    ),
}


@pytest.mark.parametrize("case", list(TABLE), ids=list(TABLE))
async def test_semantics_table(run_doc, case):
    doc, instance_status, expected = TABLE[case]
    result = await run_doc(doc)
    got = {sid: (result.last[sid].status.value if sid in result.last else None) for sid in expected}
    assert got == expected
    assert result.status == instance_status


async def test_failed_condition_message_names_the_edge(run_doc):
    result = await run_doc(TABLE["a condition that fails to evaluate fails its source, INTERNALLY_FAILED, located"][0])
    message = result.last["a"].message
    assert message.startswith("/workflow/steps/0/step/transition/successors/b: condition failed")
    assert "missing" in message


async def test_param_failure_message_is_located(run_doc):
    result = await run_doc(TABLE["a step param that fails to evaluate is INTERNALLY_FAILED"][0])
    assert result.last["a"].message.startswith("/workflow/steps/0/step/params/x/expression: CEL")
    assert "divide by zero" in result.last["a"].message


async def test_join_all_waits_for_every_predecessor(run_doc):
    doc = wf(step("a", to=["fast", "slow"]), step("fast", to=["j"]),
             step("slow", "sleep", to=["j"], params={"seconds": 0.2}), step("j"))
    result = await run_doc(doc)
    assert result.status == "SUCCEEDED"
    created = next(e.ts for e in result.timeline if e.step_id == "j" and e.status == "CREATED")
    slow_done = next(e.ts for e in result.timeline if e.step_id == "slow" and e.status == "SUCCEEDED")
    assert created >= slow_done


# -- retries ---------------------------------------------------------------------------------


RETRY_CASES = {
    # results per attempt, retry policy -> attempt statuses
    "user errors retry up to error_retry_limit": (
        ["USER_ERROR"], {"error_retry_limit": 2, **NO_BACKOFF}, ["USER_FAILED"] * 2 + ["FATALLY_FAILED"], "FAILED"),
    "default error_retry_limit is 2": (["USER_ERROR"], NO_BACKOFF, ["USER_FAILED"] * 2 + ["FATALLY_FAILED"], "FAILED"),
    "a retry can succeed": (
        ["USER_ERROR", "DONE"], {"error_retry_limit": 2, **NO_BACKOFF}, ["USER_FAILED", "SUCCEEDED"], "SUCCEEDED"),
    "platform errors count separately": (
        ["PLATFORM_ERROR", "PLATFORM_ERROR", "USER_ERROR", "PLATFORM_ERROR", "DONE"],
        {"error_retry_limit": 1, "platform_retry_limit": 3, **NO_BACKOFF},
        ["PLATFORM_FAILED", "PLATFORM_FAILED", "USER_FAILED", "PLATFORM_FAILED", "SUCCEEDED"], "SUCCEEDED"),
    "platform limit reached": (
        ["PLATFORM_ERROR"], {"platform_retry_limit": 1, **NO_BACKOFF}, ["PLATFORM_FAILED", "FATALLY_FAILED"], "FAILED"),
    "fatal errors never retry": (["FATAL_ERROR", "DONE"], NO_BACKOFF, ["FATALLY_FAILED"], "FAILED"),
    "a step may declare itself non-retryable": (["NOT_RETRYABLE", "DONE"], NO_BACKOFF, ["FATALLY_FAILED"], "FAILED"),
    "internal failures never retry": (["RAISE", "DONE"], {"error_retry_limit": 5, **NO_BACKOFF},
                                      ["INTERNALLY_FAILED"], "FAILED"),
}


@pytest.mark.parametrize("case", list(RETRY_CASES), ids=list(RETRY_CASES))
async def test_retry_classes(run_doc, case):
    results, policy, attempts, instance_status = RETRY_CASES[case]
    result = await run_doc(wf(scripted_step("s", results, retry_policy=policy)))
    assert result.tries("s") == attempts
    assert [a.attempt for a in result.attempts] == list(range(1, len(attempts) + 1))
    assert len([c for c in scripted.calls if c[0] == "s"]) == len(attempts)
    assert result.status == instance_status


async def test_timeout_retries_then_timed_out(run_doc):
    doc = wf(scripted_step("s", [{"sleep": 5}], timeout=0.05,
                           retry_policy={"timeout_retry_limit": 1, "error_retry_limit": 5, **NO_BACKOFF}))
    result = await run_doc(doc)
    assert result.tries("s") == ["TIMEOUT_FAILED", "TIMED_OUT"]
    assert result.status == "TIMED_OUT"
    assert "timed out after 0.05s" in result.last["s"].message


async def test_timeouts_are_not_retried_by_default(run_doc):
    result = await run_doc(wf(scripted_step("s", [{"sleep": 5}], timeout=0.05)))
    assert result.tries("s") == ["TIMED_OUT"]


async def test_retry_reuses_evaluated_params(run_doc):
    doc = wf(scripted_step("s", ["USER_ERROR", "DONE"], retry_policy=NO_BACKOFF,
                           params={"stamp": {"type": "STRING", "expression": "workflow.instance_id + string(size(steps))"}}))
    result = await run_doc(doc)
    first, second = [a for a in result.attempts if a.step_id == "s"]
    assert first.params == second.params and first.params["stamp"].endswith("0")


@pytest.mark.parametrize(
    "backoff, expected",
    [
        ({"type": "fixed", "base": 30}, [0, 30, 60, 90]),
        ({"type": "exponential", "base": 10, "exponent": 2}, [0, 10, 30, 70]),
        ({"type": "exponential", "base": 10, "exponent": 3, "cap": 50}, [0, 10, 40, 90]),
    ],
)
def test_backoff_timing_in_virtual_time(plugins, tmp_path, backoff, expected):
    from legato.engine import Engine
    from legato.plugins.memory import MemoryStorage

    clock = trio.testing.MockClock(autojump_threshold=0)
    scripted.calls.clear()

    async def main():
        engine = Engine(MemoryStorage(), plugins=plugins, workspace=tmp_path)
        doc = wf(scripted_step("s", ["USER_ERROR"], retry_policy={"error_retry_limit": 3, "backoff": backoff}))
        start = trio.current_time()
        instance = await engine.execute(engine.load(doc))
        return instance, [round(t - start, 3) for _, _, t in scripted.calls]

    instance, times = trio.run(main, clock=clock)
    assert instance.status.value == "FAILED"
    assert times == expected  # in virtual time (MockClock): the retries waited exactly their backoff


def test_backoff_jitter_stays_within_bounds():
    from legato.definition import Backoff

    b = Backoff("fixed", base=10, jitter=0.5)
    assert b.delay(1, 0.0) == 10 and b.delay(1, 1.0) == 15
    assert Backoff("exponential", base=1, exponent=2, cap=5).delay(10) == 5


def test_backoff_delay_never_overflows():
    """The thousandth retry of the steepest allowed backoff is its cap, not an OverflowError."""
    from legato.definition import Backoff
    from legato.limits import MAX_BACKOFF_EXPONENT

    assert Backoff("exponential", base=1, exponent=MAX_BACKOFF_EXPONENT, cap=60).delay(1000) == 60


# -- concurrency, stop, kill, timeouts ---------------------------------------------------------


async def test_step_concurrency_caps_running_steps(run_doc):
    fan = [scripted_step(f"p{i}", [{"sleep": 0.01}]) for i in range(20)]
    doc = wf(step("a", to=[f"p{i}" for i in range(20)]), *fan, properties={"step_concurrency": 3})
    result = await run_doc(doc)
    assert result.status == "SUCCEEDED"
    assert scripted.active["peak"] == 3
    waited = [e for e in result.timeline if e.status == "WAITING_FOR_PERMITS"]
    assert len(waited) == 21


async def test_stop_and_kill_an_instance(engine):
    doc = wf(step("a", to=["slow"]), step("slow", "sleep", to=["after"], params={"seconds": 60}), step("after"))
    for action, expected in (("stop", "STOPPED"), ("kill", "FAILED")):
        definition = engine.load(doc)
        instance, _ = await engine.start(definition)
        async with trio.open_nursery() as nursery:
            run = await nursery.start(lambda task_status: engine.run(definition, instance, task_status=task_status))
            with trio.fail_after(30):  # a hang guard
                while "slow" not in run.steps or run.steps["slow"].record is None or \
                        run.steps["slow"].record.status is not StepStatus.RUNNING:
                    await trio.sleep(0.01)
            getattr(run, action)(f"{action} requested by test")
        final = await engine.storage.get_instance(instance.instance_id)
        attempts = {a.step_id: a for a in await engine.storage.get_attempts(instance.instance_id)}
        assert final.status.value == expected
        assert attempts["slow"].status is StepStatus.STOPPED
        assert "after" not in attempts
        assert final.message == f"{action} requested by test"


async def test_workflow_timeout(run_doc):
    doc = wf(step("a", to=["slow"]), step("slow", "sleep", params={"seconds": 60}), timeout=0.2)
    started = time.monotonic()
    result = await run_doc(doc)
    assert result.status == "TIMED_OUT"
    assert result.last["slow"].status is StepStatus.TIMED_OUT  # MaestroTask.cancel: the flow timed out
    assert time.monotonic() - started < 30, "the 0.2 s workflow timeout did not stop the 60 s step"  # a hang guard


@pytest.mark.skipif(not os.path.exists("/proc"), reason="needs /proc to inspect processes")
async def test_step_timeout_kills_its_process_group(run_doc, tmp_path):
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! >> {pids}; (sleep 300; true) & echo $! >> {pids}; echo $$ >> {pids}; wait"
    started = time.monotonic()
    result = await run_doc(wf(step("s", "bash", params={"script": script}, timeout=0.5)))
    assert result.last["s"].status is StepStatus.TIMED_OUT
    assert time.monotonic() - started < 30, "the 0.5 s timeout did not end the 300 s script"  # a hang guard
    listed = [int(p) for p in pids.read_text().split()]
    assert len(listed) == 3
    with trio.fail_after(15):  # a hang guard: the group is killed at once, reaped soon after
        while any(alive(p) for p in listed):
            await trio.sleep(0.05)


# -- params and outputs ------------------------------------------------------------------------


async def test_params_cel_and_interpolation(run_doc):
    doc = wf(
        out("a", {"rows": 42}, to=["b"]),
        step("b", "noop", params={
            "label": "run ${threshold} $$5 ${steps.a.outputs.rows}",
            "double": {"type": "LONG", "expression": "steps.a.outputs.rows * 2"},
            "over": {"type": "BOOLEAN", "expression": "steps.a.outputs.rows > threshold"},
            "wf": {"type": "STRING", "expression": "workflow.id"},
        }),
        params={"threshold": 10, "derived": {"type": "LONG", "expression": "threshold + 1"}},
    )
    result = await run_doc(doc, {"threshold": 20})
    assert result.instance.params == {"threshold": 20, "derived": 21}
    assert result.last["b"].params == {"label": "run 20 $5 42", "double": 84, "over": True, "wf": "t"}


async def test_outputs_are_persisted_and_read_downstream(run_doc):
    doc = wf(step("a", "bash", to={"b": "steps.a.outputs.kind == 'big' && steps.a.outputs.n == 7"},
                  params={"script": 'echo "kind=big" >> "$LEGATO_OUTPUT"; echo \'{"n": 7}\' >> "$LEGATO_OUTPUT"'}),
             step("b"))
    result = await run_doc(doc)
    assert result.last["a"].outputs == {"kind": "big", "n": 7}
    assert result.statuses() == {"a": "SUCCEEDED", "b": "SUCCEEDED"}


INJECTION = "$(touch /tmp/legato-pwned); \"'`id`;${HOME}\n|&&"


async def test_injection_payload_reaches_bash_as_data(run_doc, tmp_path):
    marker = "/tmp/legato-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    got = tmp_path / "got"
    doc = wf(step("s", "bash", params={"script": f'printf "%s" "$payload" > {got}; printf "%s" "$again" > {got}2',
                                       "again": "${payload}"}),
             params={"payload": "x"})
    result = await run_doc(doc, {"payload": INJECTION})
    assert result.status == "SUCCEEDED"
    assert got.read_text() == INJECTION
    assert (tmp_path / "got2").read_text() == INJECTION
    assert not os.path.exists(marker)


async def test_idempotent_start(engine):
    definition = engine.load(wf(step("a")))
    first, created = await engine.start(definition, request_id="req-1")
    again, created_again = await engine.start(definition, request_id="req-1")
    assert created and not created_again
    assert again.instance_id == first.instance_id
    other, _ = await engine.start(definition, request_id="req-2")
    assert other.instance_id != first.instance_id


async def test_start_refuses_constant_and_near_miss_params(engine):
    """ParamsMergeHelper: a CONSTANT param is not set at start; an undeclared one is added
    (tests/test_maestro_params.py), unless one edit from a declared name."""
    from legato.engine import StartError

    definition = engine.load(wf(step("a"), params={"c": {"type": "LONG", "value": 1, "mode": "CONSTANT"}, "m": 2,
                                                   "limit": 3}))
    with pytest.raises(StartError, match="CONSTANT"):
        await engine.start(definition, {"c": 2})
    with pytest.raises(StartError, match="did you mean 'limit'"):
        await engine.start(definition, raw_params={"limt": "1"})
    with pytest.raises(StartError, match="not a LONG"):
        await engine.start(definition, raw_params={"m": "abc"})
    instance, _ = await engine.start(definition, raw_params={"m": "5"})
    assert instance.params == {"c": 1, "m": 5, "limit": 3}


async def test_every_transition_is_a_timestamped_event(run_doc):
    result = await run_doc(wf(step("a", to=["b"]), step("b")))
    a = [e.status for e in result.timeline if e.step_id == "a"]
    assert a == ["CREATED", "INITIALIZED", "WAITING_FOR_SIGNALS", "EVALUATING_PARAMS", "WAITING_FOR_PERMITS",
                 "STARTING", "RUNNING", "FINISHING", "SUCCEEDED"]
    instance = [e.status for e in result.timeline if e.step_id is None]
    assert instance == ["IN_PROGRESS", "SUCCEEDED"]
    stamps = [e.ts for e in result.timeline]
    assert stamps == sorted(stamps) and stamps[0] > 1.6e9


async def test_step_logs_are_captured(run_doc):
    result = await run_doc(wf(step("a", "bash", params={"script": "echo out; echo err >&2; exit 4"},
                                   retry_policy={"error_retry_limit": 0})))
    assert result.last["a"].status is StepStatus.FATALLY_FAILED
    assert "exit code 4" in result.last["a"].message and "(USER_FAILED, no error retry left" in result.last["a"].message
    assert "out\n" in result.log("a") and "err\n" in result.log("a")
