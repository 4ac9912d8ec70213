"""The state machines are data (DESIGN §4): check the tables and the one function that applies them."""

from __future__ import annotations

import pytest

from legato.states import (
    INSTANCE_TRANSITIONS,
    STEP_TRANSITIONS,
    IllegalTransition,
    InstanceStatus,
    StepStatus,
    instance_status_from,
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
    assert complete == {S.SUCCEEDED, S.COMPLETED_WITH_ERROR, S.SKIPPED, S.UNSATISFIED}
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
