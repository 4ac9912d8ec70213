"""The statuses Maestro gives, pinned with small workflows: definition -> final statuses.

Each case names the Maestro source (github Netflix/maestro) whose rule it follows. The decision
itself is :func:`legato.states.next_status` (tested as a table in tests/test_states.py); these
cases check that the engine applies it end to end: attempts, downstream steps, instance status.
"""

from __future__ import annotations

import json

import pytest

from . import scripted
from .conftest import legato_cli
from .test_semantics import NO_BACKOFF, out, scripted_step, step, wf

NO_RETRY = {"error_retry_limit": 0, "platform_retry_limit": 0, "timeout_retry_limit": 0}


def slow(sid, seconds=0.3, **fields):
    """A sibling that is still running when the other branch ends."""
    return scripted_step(sid, [{"sleep": seconds}], **fields)


# name -> (Maestro source, definition, instance status, {step: attempt statuses in order; [] = never created})
CASES = {
    "a user error with a retry left is retried, the last attempt ends FATALLY_FAILED": (
        "StepRuntimeManager.getUserErrorStatus, StepInstance.StepRetry.hasReachedErrorRetryLimit",
        wf(scripted_step("s", ["USER_ERROR"], to=["after"], retry_policy={"error_retry_limit": 1, **NO_BACKOFF}),
           step("after")),
        "FAILED", {"s": ["USER_FAILED", "FATALLY_FAILED"], "after": []},
    ),
    "a user error with no retry ends FATALLY_FAILED at once": (
        "StepRuntimeManager.getUserErrorStatus (errorRetries >= errorRetryLimit)",
        wf(scripted_step("s", ["USER_ERROR"], retry_policy=NO_RETRY)),
        "FAILED", {"s": ["FATALLY_FAILED"]},
    ),
    "a platform error's last retry ends FATALLY_FAILED": (
        "StepRuntimeManager.getPlatformErrorStatus, StepInstance.StepRetry.hasReachedPlatformRetryLimit",
        wf(scripted_step("s", ["PLATFORM_ERROR"], retry_policy={"platform_retry_limit": 1, **NO_BACKOFF})),
        "FAILED", {"s": ["PLATFORM_FAILED", "FATALLY_FAILED"]},
    ),
    "the retry classes count separately, each exhausted class is fatal": (
        "StepInstance.StepRetry.incrementByStatus (errorRetries, platformRetries)",
        wf(scripted_step("s", ["PLATFORM_ERROR", "USER_ERROR", "USER_ERROR"],
                         retry_policy={"error_retry_limit": 1, "platform_retry_limit": 1, **NO_BACKOFF})),
        "FAILED", {"s": ["PLATFORM_FAILED", "USER_FAILED", "FATALLY_FAILED"]},
    ),
    "a step that declares itself non-retryable ends FATALLY_FAILED at once": (
        "StepInstance.StepRetry.hasReachedErrorRetryLimit (|| !retryable); MaestroTask.doExecute "
        "(isStepNonRetryable escalates to FATALLY_FAILED)",
        wf(scripted_step("s", ["NOT_RETRYABLE", "DONE"], retry_policy={"error_retry_limit": 5, **NO_BACKOFF})),
        "FAILED", {"s": ["FATALLY_FAILED"]},
    ),
    "IGNORE_FAILURE turns the exhausted failure into COMPLETED_WITH_ERROR, the DAG goes on": (
        "MaestroTask.doExecute: case FATALLY_FAILED, FailureMode.IGNORE_FAILURE",
        wf(scripted_step("s", ["USER_ERROR"], to=["after"], failure_mode="IGNORE_FAILURE",
                         retry_policy={"error_retry_limit": 1, **NO_BACKOFF}), step("after")),
        "SUCCEEDED", {"s": ["USER_FAILED", "COMPLETED_WITH_ERROR"], "after": ["SUCCEEDED"]},
    ),
    "IGNORE_FAILURE applies to a non-retryable failure too (it is FATALLY_FAILED)": (
        "MaestroTask.doExecute: USER_FAILED escalated to FATALLY_FAILED falls through to the failure mode",
        wf(scripted_step("s", ["NOT_RETRYABLE"], to=["after"], failure_mode="IGNORE_FAILURE"), step("after")),
        "SUCCEEDED", {"s": ["COMPLETED_WITH_ERROR"], "after": ["SUCCEEDED"]},
    ),
    "a timeout with no timeout retry ends TIMED_OUT, and the instance TIMED_OUT": (
        "MaestroTask.handleTimeoutError (hasReachedTimeoutRetryLimit -> TIMED_OUT); TaskHelper.checkProgress",
        wf(scripted_step("s", [{"sleep": 30}], timeout=0.05, to=["after"]), step("after")),
        "TIMED_OUT", {"s": ["TIMED_OUT"], "after": []},
    ),
    "a timeout retries under timeout_retry_limit, then TIMED_OUT": (
        "MaestroTask.handleTimeoutError (TIMEOUT_FAILED while a timeout retry is left)",
        wf(scripted_step("s", [{"sleep": 30}], timeout=0.05,
                         retry_policy={"timeout_retry_limit": 1, **NO_BACKOFF})),
        "TIMED_OUT", {"s": ["TIMEOUT_FAILED", "TIMED_OUT"]},
    ),
    "IGNORE_FAILURE does not apply to TIMED_OUT: the branch stops, the instance is TIMED_OUT": (
        "MaestroTask.doExecute: 'Failure mode only applies to FATALLY_FAILED'; case TIMED_OUT",
        wf(scripted_step("s", [{"sleep": 30}], timeout=0.05, to=["after"], failure_mode="IGNORE_FAILURE"),
           step("after")),
        "TIMED_OUT", {"s": ["TIMED_OUT"], "after": []},
    ),
    "a timed-out step leaves other branches running to their end": (
        "MaestroTask.terminate: a step timeout times out that step only",
        wf(step("a", to=["s", "other"]), scripted_step("s", [{"sleep": 30}], timeout=0.05),
           slow("other", to=["after_other"]), step("after_other")),
        "TIMED_OUT", {"a": ["SUCCEEDED"], "s": ["TIMED_OUT"], "other": ["SUCCEEDED"], "after_other": ["SUCCEEDED"]},
    ),
    "FAILED wins over TIMED_OUT": (
        "TaskHelper.checkProgress: isFailed (highest order) > isTimeout > isStopped",
        wf(step("a", to=["s", "bad"]), scripted_step("s", [{"sleep": 30}], timeout=0.05),
           scripted_step("bad", [{"sleep": 0.1, "then": "FATAL_ERROR"}])),
        "FAILED", {"s": ["TIMED_OUT"], "bad": ["FATALLY_FAILED"]},
    ),
    "FAIL_IMMEDIATELY fires on FATALLY_FAILED: the running sibling is stopped": (
        "MaestroTask.doExecute: case FATALLY_FAILED, FAIL_IMMEDIATELY -> terminateAllSteps",
        wf(step("a", to=["bad", "other"]),
           scripted_step("bad", [{"sleep": 0.05, "then": "USER_ERROR"}], failure_mode="FAIL_IMMEDIATELY",
                         retry_policy=NO_RETRY),
           slow("other", 30)),
        "FAILED", {"bad": ["FATALLY_FAILED"], "other": ["STOPPED"]},
    ),
    "FAIL_IMMEDIATELY waits for the retries: a retried failure that then succeeds stops nothing": (
        "MaestroTask.doExecute: USER_FAILED is retried (doneWithExecute), only FATALLY_FAILED terminates",
        wf(step("a", to=["flaky", "other"]),
           scripted_step("flaky", ["USER_ERROR", "DONE"], failure_mode="FAIL_IMMEDIATELY", retry_policy=NO_BACKOFF),
           slow("other")),
        "SUCCEEDED", {"flaky": ["USER_FAILED", "SUCCEEDED"], "other": ["SUCCEEDED"]},
    ),
    "FAIL_IMMEDIATELY does not fire on TIMED_OUT": (
        "MaestroTask.doExecute: case TIMED_OUT is not failure-mode handled",
        wf(step("a", to=["s", "other"]),
           scripted_step("s", [{"sleep": 30}], timeout=0.05, failure_mode="FAIL_IMMEDIATELY"), slow("other")),
        "TIMED_OUT", {"s": ["TIMED_OUT"], "other": ["SUCCEEDED"]},
    ),
    "FAIL_IMMEDIATELY does not fire on INTERNALLY_FAILED (the instance still fails)": (
        "MaestroTask.doExecute: case INTERNALLY_FAILED 'Ignoring failure model'",
        wf(step("a", to=["s", "other"]),
           scripted_step("s", [{"sleep": 0.05, "then": "RAISE"}], failure_mode="FAIL_IMMEDIATELY"), slow("other")),
        "FAILED", {"s": ["INTERNALLY_FAILED"], "other": ["SUCCEEDED"]},
    ),
    "a step param that fails to evaluate is INTERNALLY_FAILED, IGNORE_FAILURE or not": (
        "MaestroTask.doExecute catch -> StepRuntimeSummary.markInternalError; FailureMode: "
        "'IGNORE_FAILURE failure mode won't apply to INTERNALLY_FAILED errors'",
        wf(step("s", params={"x": {"type": "LONG", "expression": "1 / 0"}}, failure_mode="IGNORE_FAILURE",
                to=["after"]), step("after")),
        "FAILED", {"s": ["INTERNALLY_FAILED"], "after": []},
    ),
    "a step param refused by the step type's schema is INTERNALLY_FAILED, never retried": (
        "StepInstance.Status.INTERNALLY_FAILED: 'without retry and ignore failure mode'",
        wf(step("s", "sleep", params={"seconds": {"type": "STRING", "expression": "'soon'"}},
                failure_mode="IGNORE_FAILURE", retry_policy={"error_retry_limit": 3, **NO_BACKOFF})),
        "FAILED", {"s": ["INTERNALLY_FAILED"]},
    ),
    "an edge condition that fails to evaluate makes its source INTERNALLY_FAILED": (
        "MaestroTask.doExecute: evaluateNextConditionParams in the SUCCEEDED case, markInternalError",
        wf(out("a", {"n": 1}, to={"b": "steps.a.outputs.missing > 1", "c": "true"}), step("b"), step("c")),
        "FAILED", {"a": ["INTERNALLY_FAILED"], "b": [], "c": []},
    ),
    "an edge condition that fails blames its source even under IGNORE_FAILURE": (
        "FailureMode: IGNORE_FAILURE won't apply to INTERNALLY_FAILED",
        wf(out("a", {"n": 1}, to={"b": "1 / 0 > 0"}, failure_mode="IGNORE_FAILURE"), step("b")),
        "FAILED", {"a": ["INTERNALLY_FAILED"], "b": []},
    ),
    "an edge condition that is not a boolean makes its source INTERNALLY_FAILED": (
        "MaestroTask.evaluateNextConditionParams (a condition must be a boolean)",
        wf(out("a", {"n": 1}, to={"b": "steps.a.outputs.n"}), step("b")),
        "FAILED", {"a": ["INTERNALLY_FAILED"], "b": []},
    ),
    "an edge condition sees the source step's own params as bare names": (
        "MaestroTask.evaluateNextConditionParams: conditions are evaluated with the step's params",
        wf(step("a", params={"n": {"type": "LONG", "value": 3}}, to={"big": "n > 2", "huge": "n > 5"}),
           step("big"), step("huge"), params={"n": {"type": "LONG", "value": 100}}),
        "SUCCEEDED", {"a": ["SUCCEEDED"], "big": ["SUCCEEDED"], "huge": ["UNSATISFIED"]},
    ),
    "an edge condition still sees workflow params and the source's status": (
        "MaestroTask.evaluateNextConditionParams",
        wf(scripted_step("a", ["FATAL_ERROR"], failure_mode="IGNORE_FAILURE",
                         to={"b": "limit == 7 && steps.a.status == 'COMPLETED_WITH_ERROR'"}), step("b"),
           params={"limit": {"type": "LONG", "value": 7}}),
        "SUCCEEDED", {"a": ["COMPLETED_WITH_ERROR"], "b": ["SUCCEEDED"]},
    ),
    "a step the workflow's timeout ends is TIMED_OUT": (
        "MaestroTask.cancel: flow TIMED_OUT -> terminate(step, TIMED_OUT)",
        wf(step("a", to=["s"]), scripted_step("s", [{"sleep": 30}], to=["after"]), step("after"), timeout=0.2),
        "TIMED_OUT", {"a": ["SUCCEEDED"], "s": ["TIMED_OUT"], "after": []},
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_maestro_final_statuses(run_doc, case):
    """Every case: the Maestro source named in CASES[case][0]."""
    _source, doc, instance_status, expected = CASES[case]
    result = await run_doc(doc)
    got = {sid: result.tries(sid) for sid in expected}
    assert got == expected
    assert result.status == instance_status, result.instance.message


async def test_exhausted_failure_message_says_its_class(run_doc):
    """StepRuntimeManager.getUserErrorStatus: the status no longer says USER_FAILED, so the message does
    (Maestro writes it to the step's timeline)."""
    result = await run_doc(CASES["a user error with no retry ends FATALLY_FAILED at once"][1])
    assert result.last["s"].message == "scripted USER_ERROR (USER_FAILED, no error retry left: FATALLY_FAILED)"
    result = await run_doc(CASES["IGNORE_FAILURE applies to a non-retryable failure too (it is FATALLY_FAILED)"][1])
    assert result.last["s"].message == ("refuses retries (USER_FAILED, declared not retryable: FATALLY_FAILED; "
                                        "IGNORE_FAILURE: COMPLETED_WITH_ERROR)")


async def test_non_retryable_step_runs_once(run_doc):
    """StepInstance.StepRetry: a step marked non-retryable is not run again, whatever the policy."""
    await run_doc(CASES["a step that declares itself non-retryable ends FATALLY_FAILED at once"][1])
    assert [c[:2] for c in scripted.calls] == [("s", 1)]


async def test_failed_edge_condition_is_located_on_the_source(run_doc):
    """MaestroTask.doExecute: the source step is marked INTERNALLY_FAILED with the reason."""
    result = await run_doc(CASES["an edge condition that fails to evaluate makes its source INTERNALLY_FAILED"][1])
    message = result.last["a"].message
    assert message.startswith("/workflow/steps/0/step/transition/successors/b: condition failed")
    assert "missing" in message
    assert result.last["a"].outputs == {"n": 1}, "the source's outputs are kept"
    assert result.instance.message == "step(s) failed: a"


def test_json_lists_every_step_of_the_definition(tmp_path):
    """Maestro's WorkflowRuntimeOverview lists every step, NOT_CREATED ones included: so do
    `legato run --json` and `legato status --json`, in definition order."""
    doc = wf(step("a", "bash", params={"script": "exit 3"}, retry_policy=NO_RETRY, to=["b"]),
             step("b", to=["c"]), step("c"), step("side"))
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(doc))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    ran = legato_cli("run", str(path), "--workspace", str(tmp_path / "ws"), "--store", store, "--json")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    report = json.loads(ran.stdout)
    assert list(report["steps"]) == ["a", "b", "c", "side"]
    assert {sid: s["status"] for sid, s in report["steps"].items()} == {
        "a": "FATALLY_FAILED", "b": "NOT_CREATED", "c": "NOT_CREATED", "side": "SUCCEEDED"}
    assert report["steps"]["b"] == {"status": "NOT_CREATED", "attempt": 0, "outputs": {}, "message": "",
                                    "started_at": None, "ended_at": None}
    shown = legato_cli("status", report["instance_id"], "--store", store, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["steps"] == report["steps"]


@pytest.mark.parametrize("limit, tries, final", [
    (1, ["USER_FAILED", "FATALLY_FAILED"], "FAILED"),  # the retry the previous owner had scheduled
    (0, ["USER_FAILED"], "FAILED"),  # an older Legato's exhausted USER_FAILED: not retried again
])
async def test_resume_takes_the_retry_a_retryable_status_promises(engine, limit, tries, final):
    """StepInstance.Status.USER_FAILED is retryable (shouldWakeup): a resumed instance whose step
    ended USER_FAILED with a retry left runs that retry; without one it is not run again."""
    from legato.model import AttemptRecord, Batch
    from legato.states import InstanceStatus, StepStatus

    doc = wf(scripted_step("s", ["USER_ERROR"], retry_policy={"error_retry_limit": limit, **NO_BACKOFF}))
    definition = engine.load(doc)
    instance, _ = await engine.start(definition)
    instance.status = InstanceStatus.IN_PROGRESS
    record = AttemptRecord(instance.instance_id, "s", 1, StepStatus.USER_FAILED, params={"results": ["USER_ERROR"]},
                           message="scripted USER_ERROR", created_at=1.0, ended_at=1.0)
    await engine.storage.commit(Batch(instance.instance_id, 1, instance=instance, attempts={("s", 1): record}))
    final_record = await engine.resume(instance.instance_id)
    attempts = await engine.storage.get_attempts(instance.instance_id)
    assert [a.status.value for a in attempts] == tries
    assert final_record.status.value == final
