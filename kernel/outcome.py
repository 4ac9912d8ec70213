"""The outcome policy: how an attempt's result becomes the step's status (DESIGN §3, §4).

A result is turned into the attempt's raw ending, then :func:`legato.states.next_status` decides:
retried after its backoff while its class has a retry left, else FATALLY_FAILED / TIMED_OUT, with
the step's failure mode applied. A step's final status releases its successors in its scope
(complete), or marks the scope failed, timed out or stopped — and FAIL_IMMEDIATELY ends the scope
(the instance, or the loop iteration the step belongs to) at once.
"""

from __future__ import annotations

import random
import time
from typing import Any

import trio

from .cel import unconvertible
from .definition import FailureMode
from .states import InstanceStatus, StepStatus, instance_ending, next_status
from .steptask import STOPPED, TIMEOUT, Internal
from .steptype import Outcome, StepResult
from .writer import crashpoint

__all__ = ["OutcomePolicy", "RETRY_CLASS", "counter"]

S = StepStatus
I = InstanceStatus  # noqa: E741
# Which backoff of a step's retry policy a retryable failure waits (RetryPolicy.backoff_for).
RETRY_CLASS = {S.USER_FAILED: "error", S.PLATFORM_FAILED: "platform", S.TIMEOUT_FAILED: "timeout"}
# The raw ending of an attempt whose step type reported a failure (StepRuntimeManager.execute).
_FAILURE = {Outcome.USER_ERROR: S.USER_FAILED, Outcome.PLATFORM_ERROR: S.PLATFORM_FAILED,
            Outcome.FATAL_ERROR: S.FATALLY_FAILED}


class OutcomePolicy:
    """Results, retries and final statuses (a mixin of :class:`legato.instance.InstanceRun`)."""

    def on_result(self, st, attempt: int, result: Any) -> None:
        self.running -= 1
        if self.permits is not None:
            self.permits.release((st.key, attempt))
        sdef = st.sdef
        record = st.record  # this attempt's, even once a retry is scheduled
        if result is STOPPED:
            # MaestroTask.cancel: a step the workflow's timeout ends is TIMED_OUT, else STOPPED;
            # one an action stopped, killed or skipped ends as it asked (legato.actions).
            ending = self.ending or st.scope.ending
            asked = self.stopped_step(st) if self.step_actions else None
            if asked is not None:
                self.end_step(st, *asked)
            else:
                self.end_step(st, S.TIMED_OUT if ending is I.TIMED_OUT else S.STOPPED,
                              self.end_message or st.scope.message or "stopped")
        elif result is TIMEOUT:
            self._conclude(st, S.TIMEOUT_FAILED, f"timed out after {sdef.timeout:g}s", True)
        elif isinstance(result, Internal):
            self.end_step(st, S.INTERNALLY_FAILED, result.message)
        elif not isinstance(result, StepResult) or not isinstance(result.outcome, Outcome):
            self.end_step(st, S.INTERNALLY_FAILED,
                          f"step type {sdef.type!r} returned {result!r:.200}, not a StepResult (a bug in the plugin)")
        elif result.outcome is Outcome.DONE and not (result.outputs and _bad_outputs(result)):
            st.record.outputs = _outputs(result.outputs, self.secrets)
            self.set(st, S.FINISHING)
            signals = self.output_signals(st) if sdef.signal_outputs else None
            if isinstance(signals, str):  # a signal output that cannot be evaluated: the engine's own error
                self.end_step(st, S.INTERNALLY_FAILED, signals)
            else:
                self.end_step(st, S.SUCCEEDED, result.message)
                if signals and st.record.status is S.SUCCEEDED:  # announced in the commit of its success
                    self.batch.signals.extend(signals)
        else:
            if result.outputs:
                _bad_outputs(result)
            st.record.outputs = _outputs(result.outputs, self.secrets)
            self._conclude(st, _FAILURE[result.outcome], result.message or result.outcome.value, result.retryable)
        if record.handle is not None and sdef.type in self.engine.releasing:
            self.releases.append((st, attempt, record.handle))
        self.grant_permits()

    def _conclude(self, st, raw: StepStatus, message: str, retryable: bool) -> None:
        """End a failed attempt as :func:`legato.states.next_status` decides: retried while its
        class has a retry left, else FATALLY_FAILED / TIMED_OUT, with the failure mode applied."""
        sdef = st.sdef
        used, limit = counter(st, raw)
        status = next_status(raw, used, limit, sdef.failure_mode, retryable)
        if status.retryable:
            if self.ending is not None or st.scope.ending is not None:
                # the scope is ending: the retry would be stopped unborn
                st.record.ended_at = time.time()
                self.set(st, status, message)
                self.leave(st)
                return
            if raw is S.USER_FAILED:
                st.errors += 1
            elif raw is S.PLATFORM_FAILED:
                st.platform += 1
            else:
                st.timeouts += 1
            self._retry(st, status, message, used + 1)
            return
        if status is not raw and raw is not S.TIMEOUT_FAILED:  # say what the status hides
            why = []
            if raw is not S.FATALLY_FAILED:
                left = "declared not retryable" if not retryable else f"no {RETRY_CLASS[raw]} retry left"
                why.append(f"{raw.value}, {left}: FATALLY_FAILED")
            if status is S.COMPLETED_WITH_ERROR:
                why.append("IGNORE_FAILURE: COMPLETED_WITH_ERROR")
            message = f"{message} ({'; '.join(why)})"
        self.end_step(st, status, message)

    def _retry(self, st, status: StepStatus, message: str, n: int) -> None:
        """End this attempt ``status`` and schedule the next after the backoff for retry ``n``."""
        st.record.ended_at = time.time()
        self.set(st, status, message)
        policy = st.sdef.retry
        delay = policy.backoff_for(RETRY_CLASS[status]).delay(n, random.random())
        limit = {S.USER_FAILED: policy.error_retry_limit, S.PLATFORM_FAILED: policy.platform_retry_limit}.get(
            status, policy.timeout_retry_limit)
        self.batch.events[-1].retry = (st.record.ended_at + delay, st.attempt + 1 + limit - n)
        self.schedule_retry(st, delay)

    def schedule_retry(self, st, delay: float) -> None:
        scope = trio.CancelScope()
        self.retrying[st.key] = (scope, st)
        self.nursery.start_soon(self._retry_after, st, delay, scope)

    async def _retry_after(self, st, delay: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(delay / 2)
            crashpoint("backoff")
            await trio.sleep(delay / 2)
            self.post(("retry", st))

    def end_step(self, st, status: StepStatus, message: str = "") -> None:
        """Record the step's final status and, when the DAG continues, its successors' fate.

        A complete step's conditional edges are evaluated first: one that fails makes the step
        itself INTERNALLY_FAILED (MaestroTask.doExecute: evaluateNextConditionParams throws,
        markInternalError), and nothing downstream is created."""
        st.record.ended_at = time.time()
        st.finished = True
        if st.sdef.type not in self.engine.releasing:
            st.config = None  # validated again if the step ever runs again (a restart)
        scope = st.scope
        scope.finished.append(st)
        self.leave(st)
        edges = None
        if st.conditional and status.complete and status is not S.UNSATISFIED:
            edges = scope.edges(st, status)
            if isinstance(edges, str):
                self.set(st, S.INTERNALLY_FAILED, edges)
                scope.recontext(st)
                scope.failed = True
                return
        self.set(st, status, message)
        if status.complete:
            scope.release(st, edges)
            return
        ending = instance_ending(status)
        if ending is I.FAILED:
            scope.failed = True
        elif ending is I.TIMED_OUT:
            scope.timed_out = True
        # FAIL_IMMEDIATELY applies to FATALLY_FAILED only (MaestroTask.doExecute).
        if status is S.FATALLY_FAILED and st.sdef.failure_mode is FailureMode.FAIL_IMMEDIATELY:
            reason = f"step {st.sdef.id} failed ({status.value}) with FAIL_IMMEDIATELY"
            if scope.parent is None:
                if self.ending is None:
                    self.end(I.FAILED, reason)
            elif scope.ending is None:
                self.end_scope(scope, I.FAILED, reason)


def counter(st, raw: StepStatus) -> tuple[int, int]:
    """The retries of ``raw``'s class the step has made, and its policy's limit for that class."""
    policy = st.sdef.retry
    if raw is S.USER_FAILED:
        return st.errors, policy.error_retry_limit
    if raw is S.PLATFORM_FAILED:
        return st.platform, policy.platform_retry_limit
    if raw is S.TIMEOUT_FAILED:
        return st.timeouts, policy.timeout_retry_limit
    return 0, 0


def _outputs(outputs: Any, secrets=None) -> dict[str, Any]:
    if not isinstance(outputs, dict):
        return {}
    if secrets is not None:
        return secrets.mask_value(outputs)
    return dict(outputs)


def _bad_outputs(result: StepResult) -> bool:
    """Whether the result's outputs hold a value CEL cannot (an integer beyond 64 bits, nesting
    too deep). If so they are dropped and a DONE result becomes the step's user error, naming the
    key: kept, they would break every later evaluation and every resume of the instance."""
    if not isinstance(result.outputs, dict):
        return False  # not a map: dropped by _outputs
    problem = unconvertible(result.outputs)
    if problem is None:
        return False
    path, reason = problem
    key, _, inner = path.lstrip("/").partition("/")
    message = f"output {key!r}{f' at /{inner}' if inner else ''}: {reason} (the outputs were dropped)"
    if result.outcome is Outcome.DONE:
        result.outcome = Outcome.USER_ERROR
    else:  # failed anyway: keep its outcome and say both
        message = f"{result.message or result.outcome.value}; and {message}"
    result.outputs, result.message = {}, message
    return True
