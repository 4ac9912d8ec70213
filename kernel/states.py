"""The lifecycle state machines of a workflow instance and of a step attempt (DESIGN §4).

This module is pure data plus small pure functions: the tables say which transitions exist,
:func:`transition` applies one or raises, and :func:`next_status` decides how an attempt ends
(Maestro's ``StepRuntimeManager`` / ``MaestroTask`` rules, in one place).  Nothing here does I/O or
knows about trio.
"""

from __future__ import annotations

import enum

__all__ = [
    "StepStatus",
    "InstanceStatus",
    "IllegalTransition",
    "STEP_TRANSITIONS",
    "INSTANCE_TRANSITIONS",
    "transition",
    "next_status",
    "instance_ending",
    "instance_status_from",
]


class StepStatus(str, enum.Enum):
    """The status of one attempt of a step (a step's status is its latest attempt's)."""

    NOT_CREATED = "NOT_CREATED"
    CREATED = "CREATED"
    INITIALIZED = "INITIALIZED"
    PAUSED = "PAUSED"
    WAITING_FOR_SIGNALS = "WAITING_FOR_SIGNALS"
    EVALUATING_PARAMS = "EVALUATING_PARAMS"
    WAITING_FOR_PERMITS = "WAITING_FOR_PERMITS"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    FINISHING = "FINISHING"
    DISABLED = "DISABLED"
    SUCCEEDED = "SUCCEEDED"
    COMPLETED_WITH_ERROR = "COMPLETED_WITH_ERROR"
    SKIPPED = "SKIPPED"
    UNSATISFIED = "UNSATISFIED"
    USER_FAILED = "USER_FAILED"
    PLATFORM_FAILED = "PLATFORM_FAILED"
    TIMEOUT_FAILED = "TIMEOUT_FAILED"
    FATALLY_FAILED = "FATALLY_FAILED"
    INTERNALLY_FAILED = "INTERNALLY_FAILED"
    STOPPED = "STOPPED"
    TIMED_OUT = "TIMED_OUT"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        """No transition leaves this state; a retry is a new attempt, not a transition."""
        return self in _STEP_TERMINAL

    @property
    def complete(self) -> bool:
        """Terminal and lets the DAG continue downstream (join-all counts it as done)."""
        return self in _STEP_COMPLETE

    @property
    def failed(self) -> bool:
        """Terminal and not complete: descendants stay NOT_CREATED."""
        return self in _STEP_TERMINAL and self not in _STEP_COMPLETE

    @property
    def retryable(self) -> bool:
        """Terminal for this attempt, and the system tries again: a new attempt follows."""
        return self in _STEP_RETRYABLE

    @property
    def restartable(self) -> bool:
        """Terminal, not complete and not retried by the system (Maestro's ``isRestartable``)."""
        return self in _STEP_TERMINAL and self not in _STEP_COMPLETE and self not in _STEP_RETRYABLE


class InstanceStatus(str, enum.Enum):
    """The status of a workflow instance (of its current run)."""

    CREATED = "CREATED"
    IN_PROGRESS = "IN_PROGRESS"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    TIMED_OUT = "TIMED_OUT"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        return self in _INSTANCE_TERMINAL


S = StepStatus
I = InstanceStatus  # noqa: E741

# Maestro's StepInstance.Status flags: terminal, complete (the DAG goes on), retryable.
_STEP_COMPLETE = frozenset({S.DISABLED, S.SUCCEEDED, S.COMPLETED_WITH_ERROR, S.SKIPPED, S.UNSATISFIED})
_STEP_RETRYABLE = frozenset({S.USER_FAILED, S.PLATFORM_FAILED, S.TIMEOUT_FAILED})
_STEP_TERMINAL = _STEP_COMPLETE | {
    S.USER_FAILED,
    S.PLATFORM_FAILED,
    S.TIMEOUT_FAILED,
    S.FATALLY_FAILED,
    S.INTERNALLY_FAILED,
    S.STOPPED,
    S.TIMED_OUT,
}
_INSTANCE_TERMINAL = frozenset({I.SUCCEEDED, I.FAILED, I.STOPPED, I.TIMED_OUT})

# Every live state may be stopped, skipped, killed (Maestro's StepInstanceAction.KILL: FATALLY_FAILED,
# COMPLETED_WITH_ERROR under IGNORE_FAILURE), or blamed on Legato itself.
_ANY_LIVE = (S.STOPPED, S.SKIPPED, S.FATALLY_FAILED, S.COMPLETED_WITH_ERROR, S.INTERNALLY_FAILED)
# States in which a step's own work (or its parameter evaluation) can fail.
_RUN_ENDINGS = (
    S.USER_FAILED,
    S.PLATFORM_FAILED,
    S.TIMEOUT_FAILED,
    S.FATALLY_FAILED,
    S.TIMED_OUT,
    S.COMPLETED_WITH_ERROR,
)

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    S.NOT_CREATED: frozenset({S.CREATED, S.UNSATISFIED, S.SKIPPED, S.DISABLED}),
    S.CREATED: frozenset({S.INITIALIZED, *_ANY_LIVE}),
    S.INITIALIZED: frozenset({S.PAUSED, S.WAITING_FOR_SIGNALS, *_ANY_LIVE}),
    S.PAUSED: frozenset({S.WAITING_FOR_SIGNALS, *_ANY_LIVE}),
    S.WAITING_FOR_SIGNALS: frozenset({S.EVALUATING_PARAMS, S.TIMED_OUT, *_ANY_LIVE}),
    S.EVALUATING_PARAMS: frozenset({S.WAITING_FOR_PERMITS, *_ANY_LIVE}),
    S.WAITING_FOR_PERMITS: frozenset({S.STARTING, S.TIMED_OUT, *_ANY_LIVE}),
    S.STARTING: frozenset({S.RUNNING, *_RUN_ENDINGS, *_ANY_LIVE}),
    S.RUNNING: frozenset({S.FINISHING, *_RUN_ENDINGS, *_ANY_LIVE}),
    S.FINISHING: frozenset({S.SUCCEEDED, *_RUN_ENDINGS, *_ANY_LIVE}),
    **{state: frozenset() for state in _STEP_TERMINAL},
}

INSTANCE_TRANSITIONS: dict[InstanceStatus, frozenset[InstanceStatus]] = {
    I.CREATED: frozenset({I.IN_PROGRESS, I.STOPPED, I.FAILED, I.TIMED_OUT}),
    I.IN_PROGRESS: frozenset({I.PAUSED, I.SUCCEEDED, I.FAILED, I.STOPPED, I.TIMED_OUT}),
    I.PAUSED: frozenset({I.IN_PROGRESS, I.FAILED, I.STOPPED, I.TIMED_OUT}),
    **{state: frozenset() for state in _INSTANCE_TERMINAL},
}


class IllegalTransition(Exception):
    """A transition the state machine does not allow: always a bug in Legato or a plugin."""

    def __init__(self, current: enum.Enum, new: enum.Enum, what: str = "") -> None:
        self.current, self.new = current, new
        where = f" of {what}" if what else ""
        super().__init__(f"illegal transition{where}: {current.value} -> {new.value}")


def transition(current, new, what: str = ""):
    """Return ``new`` if the state machine allows ``current -> new``, else raise IllegalTransition.

    Works for both :class:`StepStatus` and :class:`InstanceStatus`.
    """
    table = STEP_TRANSITIONS if isinstance(current, StepStatus) else INSTANCE_TRANSITIONS
    if new not in table[current]:
        raise IllegalTransition(current, new, what)
    return new


# -- how an attempt ends ------------------------------------------------------------------------

# What a retryable failure becomes once no retry of its class is left (StepRuntimeManager's
# getUserErrorStatus / getPlatformErrorStatus, MaestroTask.handleTimeoutError).
_EXHAUSTED = {S.USER_FAILED: S.FATALLY_FAILED, S.PLATFORM_FAILED: S.FATALLY_FAILED, S.TIMEOUT_FAILED: S.TIMED_OUT}
_IGNORE_FAILURE = "IGNORE_FAILURE"  # FailureMode is a str enum: compared by value, no import of definition


def next_status(outcome: StepStatus, retries: int, limit: int, failure_mode: str,
                retryable: bool = True) -> StepStatus:
    """How an attempt ends, given what its work gave, the retry counter of that class and the
    step's failure mode (Maestro's ``StepRuntimeManager``, ``StepInstance.StepRetry`` and
    ``MaestroTask.doExecute``).

    ``outcome`` is the attempt's raw ending: USER_FAILED / PLATFORM_FAILED / TIMEOUT_FAILED (the
    step's own timeout fired), FATALLY_FAILED, INTERNALLY_FAILED, STOPPED, TIMED_OUT or SUCCEEDED.
    ``retries`` are the retries of that class already made, ``limit`` the policy's limit for it;
    ``retryable`` is False when the step declared the failure not retryable.

    - A retryable failure with a retry of its class left stays as it is: the result is
      ``retryable`` and a new attempt follows.
    - Without one, USER_FAILED and PLATFORM_FAILED become FATALLY_FAILED, TIMEOUT_FAILED TIMED_OUT.
    - The failure mode applies to FATALLY_FAILED only: IGNORE_FAILURE makes it
      COMPLETED_WITH_ERROR (the DAG goes on). TIMED_OUT, INTERNALLY_FAILED and STOPPED stay.
    """
    exhausted = _EXHAUSTED.get(outcome)
    if exhausted is not None:
        if retryable and retries < limit:
            return outcome
        outcome = exhausted
    if outcome is S.FATALLY_FAILED and failure_mode == _IGNORE_FAILURE:
        return S.COMPLETED_WITH_ERROR
    return outcome


# What a step's final status makes of its instance (TaskHelper.checkProgress).
_INSTANCE_ENDING = {
    S.FATALLY_FAILED: I.FAILED, S.INTERNALLY_FAILED: I.FAILED, S.USER_FAILED: I.FAILED,
    S.PLATFORM_FAILED: I.FAILED, S.TIMEOUT_FAILED: I.FAILED, S.TIMED_OUT: I.TIMED_OUT, S.STOPPED: I.STOPPED,
}


def instance_ending(status: StepStatus) -> InstanceStatus | None:
    """The instance ending a step's final status asks for: FAILED for the failed ones, TIMED_OUT
    for TIMED_OUT, STOPPED for STOPPED, None for the complete ones (``TaskHelper.checkProgress``)."""
    return _INSTANCE_ENDING.get(status)


# Precedence when several endings apply to one instance (DESIGN §4).
_PRECEDENCE = (I.FAILED, I.TIMED_OUT, I.STOPPED, I.SUCCEEDED)


def instance_status_from(candidates) -> InstanceStatus:
    """The instance's final status given every ending that applies: FAILED > TIMED_OUT > STOPPED > SUCCEEDED."""
    present = set(candidates)
    for status in _PRECEDENCE:
        if status in present:
            return status
    return I.SUCCEEDED
