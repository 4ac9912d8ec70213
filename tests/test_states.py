"""The state machines are data (DESIGN §4): check the tables and the one function that applies them."""

from __future__ import annotations

import pytest

from legato.states import (
    INSTANCE_TRANSITIONS,
    STEP_TRANSITIONS,
    IllegalTransition,
    InstanceStatus,
    StepStatus,
    instance_ending,
    instance_status_from,
    next_status,
    transition,
)

S, I = StepStatus, InstanceStatus


def test_every_state_has_a_row():
    assert set(STEP_TRANSITIONS) == set(StepStatus)
    assert set(INSTANCE_TRANSITIONS) == set(InstanceStatus)


@pytest.mark.parametrize("state", [s for s in StepStatus if s.terminal])
def test_terminal_step_states_never_change(state):
    assert STEP_TRANSITIONS[state] == frozenset()
    for new in StepStatus:
        with pytest.raises(IllegalTransition):
            transition(state, new)


def test_happy_path_is_allowed_in_order():
    path = [S.NOT_CREATED, S.CREATED, S.INITIALIZED, S.WAITING_FOR_SIGNALS, S.EVALUATING_PARAMS,
            S.WAITING_FOR_PERMITS, S.STARTING, S.RUNNING, S.FINISHING, S.SUCCEEDED]
    for current, new in zip(path, path[1:]):
        assert transition(current, new) is new


def test_skipping_a_state_is_illegal_and_says_what():
    with pytest.raises(IllegalTransition, match="illegal transition of step x: CREATED -> RUNNING"):
        transition(S.CREATED, S.RUNNING, "step x")


def test_complete_and_failed_partition_the_terminal_states():
    complete = {s for s in StepStatus if s.complete}
    assert complete == {S.DISABLED, S.SUCCEEDED, S.COMPLETED_WITH_ERROR, S.SKIPPED, S.UNSATISFIED}
    assert all(s.terminal for s in complete)
    failed = {s for s in StepStatus if s.failed}
    assert not failed & complete
    assert failed | complete == {s for s in StepStatus if s.terminal}


def test_instance_machine_and_precedence():
    assert transition(I.CREATED, I.IN_PROGRESS) is I.IN_PROGRESS
    for terminal in (I.SUCCEEDED, I.FAILED, I.STOPPED, I.TIMED_OUT):
        assert terminal.terminal and INSTANCE_TRANSITIONS[terminal] == frozenset()
        with pytest.raises(IllegalTransition):
            transition(terminal, I.IN_PROGRESS)
    assert instance_status_from([I.STOPPED, I.FAILED, I.TIMED_OUT]) is I.FAILED
    assert instance_status_from([I.STOPPED, I.TIMED_OUT]) is I.TIMED_OUT
    assert instance_status_from([I.STOPPED]) is I.STOPPED
    assert instance_status_from([]) is I.SUCCEEDED


# Maestro's StepInstance.Status(terminal, complete, overview, retryable), as in its source.
MAESTRO_FLAGS = {
    "NOT_CREATED": (False, False, False), "CREATED": (False, False, False), "INITIALIZED": (False, False, False),
    "PAUSED": (False, False, False), "WAITING_FOR_SIGNALS": (False, False, False),
    "EVALUATING_PARAMS": (False, False, False), "WAITING_FOR_PERMITS": (False, False, False),
    "STARTING": (False, False, False), "RUNNING": (False, False, False), "FINISHING": (False, False, False),
    "DISABLED": (True, True, False), "UNSATISFIED": (True, True, False), "SKIPPED": (True, True, False),
    "SUCCEEDED": (True, True, False), "COMPLETED_WITH_ERROR": (True, True, False),
    "USER_FAILED": (True, False, True), "PLATFORM_FAILED": (True, False, True),
    "FATALLY_FAILED": (True, False, False), "INTERNALLY_FAILED": (True, False, False),
    "STOPPED": (True, False, False), "TIMEOUT_FAILED": (True, False, True), "TIMED_OUT": (True, False, False),
}


def test_step_statuses_are_maestros_with_its_flags():
    """StepInstance.Status (maestro-common): the same names, and terminal / complete / retryable
    as Maestro flags them; restartable is Maestro's isRestartable (terminal, not complete, not
    retryable)."""
    assert {s.value for s in StepStatus} == set(MAESTRO_FLAGS)
    for status in StepStatus:
        terminal, complete, retryable = MAESTRO_FLAGS[status.value]
        assert (status.terminal, status.complete, status.retryable) == (terminal, complete, retryable), status
        assert status.restartable == (terminal and not complete and not retryable)


def test_disabled_is_reached_from_not_created_only():
    """StepInstance.Status.DISABLED: 'disabled at workflow instance start time', never run."""
    assert [s for s in StepStatus if S.DISABLED in STEP_TRANSITIONS[s]] == [S.NOT_CREATED]


IGN, FAR, FIM = "IGNORE_FAILURE", "FAIL_AFTER_RUNNING", "FAIL_IMMEDIATELY"

# (raw attempt ending, retries of its class used, limit, failure mode, declared retryable) -> next status
NEXT_STATUS = [
    # StepRuntimeManager.getUserErrorStatus / getPlatformErrorStatus: retry while under the limit...
    (S.USER_FAILED, 0, 2, FAR, True, S.USER_FAILED),
    (S.USER_FAILED, 1, 2, IGN, True, S.USER_FAILED),
    (S.PLATFORM_FAILED, 0, 1, FIM, True, S.PLATFORM_FAILED),
    # ... then FATALLY_FAILED (StepRetry.hasReachedErrorRetryLimit: errorRetries >= errorRetryLimit)
    (S.USER_FAILED, 2, 2, FAR, True, S.FATALLY_FAILED),
    (S.USER_FAILED, 0, 0, FIM, True, S.FATALLY_FAILED),
    (S.PLATFORM_FAILED, 1, 1, FAR, True, S.FATALLY_FAILED),
    # ... or at once when the step says it is not retryable (hasReached...: `|| !retryable`)
    (S.USER_FAILED, 0, 5, FAR, False, S.FATALLY_FAILED),
    (S.PLATFORM_FAILED, 0, 5, FAR, False, S.FATALLY_FAILED),
    # MaestroTask.doExecute: the failure mode applies to FATALLY_FAILED only
    (S.USER_FAILED, 2, 2, IGN, True, S.COMPLETED_WITH_ERROR),
    (S.USER_FAILED, 0, 5, IGN, False, S.COMPLETED_WITH_ERROR),
    (S.FATALLY_FAILED, 0, 0, IGN, True, S.COMPLETED_WITH_ERROR),
    (S.FATALLY_FAILED, 0, 0, FIM, True, S.FATALLY_FAILED),
    (S.FATALLY_FAILED, 0, 0, FAR, False, S.FATALLY_FAILED),
    # MaestroTask.handleTimeoutError: TIMEOUT_FAILED while a timeout retry is left, then TIMED_OUT,
    # which no failure mode touches
    (S.TIMEOUT_FAILED, 0, 1, FAR, True, S.TIMEOUT_FAILED),
    (S.TIMEOUT_FAILED, 1, 1, FAR, True, S.TIMED_OUT),
    (S.TIMEOUT_FAILED, 0, 0, IGN, True, S.TIMED_OUT),
    (S.TIMEOUT_FAILED, 0, 3, IGN, False, S.TIMED_OUT),
    (S.TIMED_OUT, 0, 0, IGN, True, S.TIMED_OUT),
    # INTERNALLY_FAILED: "without retry and ignore failure mode" (StepInstance.Status, FailureMode)
    (S.INTERNALLY_FAILED, 0, 5, IGN, True, S.INTERNALLY_FAILED),
    (S.STOPPED, 0, 5, IGN, True, S.STOPPED),
    (S.SUCCEEDED, 0, 0, IGN, True, S.SUCCEEDED),
]


@pytest.mark.parametrize("raw, used, limit, mode, retryable, expected", NEXT_STATUS)
def test_next_status_table(raw, used, limit, mode, retryable, expected):
    """states.next_status is Maestro's StepRuntimeManager + StepInstance.StepRetry + MaestroTask.doExecute
    decision: the result is retryable exactly when a new attempt follows."""
    got = next_status(raw, used, limit, mode, retryable)
    assert got is expected
    assert got.terminal
    assert got.retryable == (expected is raw and raw in (S.USER_FAILED, S.PLATFORM_FAILED, S.TIMEOUT_FAILED))


def test_next_status_takes_the_failure_mode_enum():
    """The definition's FailureMode (a str enum) is what the engine passes."""
    from legato.definition import FailureMode

    assert next_status(S.FATALLY_FAILED, 0, 0, FailureMode.IGNORE_FAILURE) is S.COMPLETED_WITH_ERROR
    assert next_status(S.FATALLY_FAILED, 0, 0, FailureMode.FAIL_IMMEDIATELY) is S.FATALLY_FAILED


def test_instance_endings_follow_check_progress():
    """TaskHelper.checkProgress: the failed statuses make the instance FAILED, TIMED_OUT makes it
    TIMED_OUT, STOPPED STOPPED; with the precedence FAILED > TIMED_OUT > STOPPED > SUCCEEDED."""
    failed = {S.FATALLY_FAILED, S.INTERNALLY_FAILED, S.USER_FAILED, S.PLATFORM_FAILED, S.TIMEOUT_FAILED}
    for status in StepStatus:
        want = (I.FAILED if status in failed else I.TIMED_OUT if status is S.TIMED_OUT
                else I.STOPPED if status is S.STOPPED else None)
        assert instance_ending(status) is want, status
    assert instance_status_from([instance_ending(S.TIMED_OUT), instance_ending(S.STOPPED)]) is I.TIMED_OUT
    assert instance_status_from([instance_ending(S.TIMED_OUT), instance_ending(S.FATALLY_FAILED)]) is I.FAILED
