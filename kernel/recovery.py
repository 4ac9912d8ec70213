"""Recovery: rebuild a run from what storage holds, after the previous owner stopped (DESIGN §10),
or for a restart (a new run of an ended instance, from its incomplete steps; DESIGN §3 actions).

Scopes are rebuilt in topological order, so each step's predecessors are settled before it:
finished steps release their successors again (conditions are pure functions of durable outputs),
live attempts continue, retries that were waiting are scheduled for what is left of their
backoff, and interrupted attempts are reattached or failed as platform errors. A loop step that
was running gets its iterations back: finished ones are counted, never run again; running ones
are rebuilt the same way, one scope each.

A step whose latest attempt ended without completing in an earlier run than the instance's
current one runs again, as a new attempt with fresh retry budgets: that is what a restart does,
and what a resumed restart still has to do. Complete steps (and succeeded iterations) of earlier
runs are carried over, never run again.
"""

from __future__ import annotations

import graphlib
import random
import time

from .model import AttemptRecord
from .outcome import RETRY_CLASS, counter
from .states import STEP_TRANSITIONS, InstanceStatus, StepStatus, instance_ending, next_status
from .steptype import Outcome, StepResult

__all__ = ["Recovery", "group_history", "MATERIALIZE"]

S = StepStatus
I = InstanceStatus  # noqa: E741

# The states a fresh attempt walks through before it may start, in order.
MATERIALIZE = (S.INITIALIZED, S.WAITING_FOR_SIGNALS, S.EVALUATING_PARAMS)


def group_history(attempts: list[AttemptRecord]) -> dict[str, dict[str, list[AttemptRecord]]]:
    """The attempts by scope path, then by step id (or iteration number) in it:
    ``loop/3/job`` is step ``job`` of the scope ``loop/3``; ``loop/3`` is iteration 3 of the
    scope ``loop`` (the loop step's own path)."""
    groups: dict[str, dict[str, list[AttemptRecord]]] = {}
    for record in attempts:
        prefix, _, name = record.step_id.rpartition("/")
        groups.setdefault(prefix, {}).setdefault(name, []).append(record)
    return groups


class Recovery:
    """Resuming an instance run (a mixin of :class:`legato.instance.InstanceRun`)."""

    def restore(self, scope, groups: dict[str, dict[str, list[AttemptRecord]]]) -> None:
        saved, self.history = self.history, groups  # what a loop step started meanwhile recalls
        try:
            self._restore(scope, groups)
        finally:
            self.history = saved

    def _restore(self, scope, groups: dict[str, dict[str, list[AttemptRecord]]]) -> None:
        history = groups.get(scope.prefix, {})
        engine = self.engine
        for sdef in scope.order:
            if sdef.loop is None:
                engine.step_type(sdef.type)  # instantiating a step type tells whether it releases
        releasing = engine.releasing
        # Every step with history gets its record first, so releasing a finished predecessor
        # never creates a step that already exists.
        for sid, records in history.items():
            st = scope.steps.get(sid)
            if st is None:
                continue  # an iteration row (its loop step restores it)
            records.sort(key=lambda r: r.attempt)
            st.record = records[-1]
            st.attempt = st.record.attempt
            st.params = next((r.params for r in records if r.params is not None), None)
            st.errors = sum(r.status is S.USER_FAILED for r in records)
            st.platform = sum(r.status is S.PLATFORM_FAILED for r in records)
            st.timeouts = sum(r.status is S.TIMEOUT_FAILED for r in records)
            if st.sdef.type in releasing and st.sdef.loop is None:
                # Ended attempts whose release a crash may have cut off (it is idempotent).
                for r in records:
                    if r.status.terminal and r.handle is not None:
                        self.nursery.start_soon(self.release_attempt, st, r.attempt, r.handle)
        order = graphlib.TopologicalSorter({s.id: s.predecessors for s in scope.order}).static_order()
        for sid in order:
            if sid not in history:
                continue
            st = scope.steps[sid]
            status = st.record.status
            if status.complete:
                st.finished = True
                scope.finished.append(st)
                if status is not S.UNSATISFIED:
                    st.satisfied = True
                scope.release(st)
            elif status.terminal and st.record.run_id < self.instance.run_id:
                self._rerun(st)
            elif status.terminal:
                self._restore_ended(st, status)
            elif st.sdef.loop is not None and status in (S.STARTING, S.RUNNING):
                self.enter(st)
                self.restore_loop(st, groups)
            elif status in (S.STARTING, S.RUNNING, S.FINISHING):
                self.enter(st)
                self._restore_interrupted(st)
            else:
                self.enter(st)
                self._continue(st)

    def _rerun(self, st) -> None:
        """A new run of an instance runs this step again (it ended incomplete in an earlier run):
        a new attempt, with its evaluated params kept and fresh retry budgets; a loop step
        carries its succeeded iterations over and runs the others again."""
        st.errors = st.platform = st.timeouts = 0
        st.params = st.record.params
        self.materialize(st)

    def _restore_ended(self, st, status: StepStatus) -> None:
        if status.retryable:
            # The counters include this attempt: was a retry due after the one before it? (False
            # only for a record an older Legato left, which kept the status of an exhausted class.)
            used, limit = counter(st, status)
            pending = next_status(status, used - 1, limit, st.sdef.failure_mode) is status
        else:
            pending = False
        if pending:  # a retry was scheduled when the previous owner stopped
            delay = st.sdef.retry.backoff_for(RETRY_CLASS[status]).delay(used, random.random())
            left = max(0.0, (st.record.ended_at or 0.0) + delay - time.time())
            self.enter(st)
            self.schedule_retry(st, left)
            return
        st.finished = True
        scope = st.scope
        scope.finished.append(st)
        ending = instance_ending(status)
        if ending is I.STOPPED:
            if scope.parent is None:
                self.ending = self.ending or I.STOPPED
                self.end_message = self.end_message or st.record.message
            else:
                scope.ending = scope.ending or I.STOPPED
                scope.message = scope.message or st.record.message
        elif ending is I.TIMED_OUT:
            scope.timed_out = True
        elif ending is I.FAILED:
            scope.failed = True

    def _restore_interrupted(self, st) -> None:
        """The previous owner died while this attempt's work may have been running."""
        step_type = self.engine.step_type(st.sdef.type)
        if st.record.status is not S.STARTING and step_type.can_reattach and st.record.handle is not None:
            if not self.ready(st):  # a reattached attempt sees the same ctx.config as the one that started it
                return
            st.reattach = st.record.handle
            self.running += 1
            self.to_launch.append(st)
            return
        if st.record.handle is not None:
            try:
                step_type.reap(self.step_context(st, st.attempt), st.record.handle)
            except Exception as exc:  # reaping is best effort; say so in the attempt's message
                st.record.message = f"could not reap what the previous worker left running: {exc}"
        self.running += 1  # on_result gives the permit back
        what = "started" if st.record.status is S.STARTING else "ran"
        self.on_result(st, st.attempt, StepResult(
            Outcome.PLATFORM_ERROR, {},
            f"the worker that {what} this attempt stopped ({st.record.status.value}); "
            f"{st.sdef.type} steps cannot be reattached, so its outcome is unknown"))

    def _continue(self, st) -> None:
        """An attempt created but not started: walk it on from where it stopped."""
        record = st.record
        if st.sdef.signal_dependencies and record.status in (S.CREATED, S.INITIALIZED, S.WAITING_FOR_SIGNALS):
            for status in (S.INITIALIZED, S.WAITING_FOR_SIGNALS):  # and wait again (legato.signalwait)
                if status in STEP_TRANSITIONS[record.status]:
                    self.set(st, status)
            self.wait_for_signals(st)
            return
        for status in MATERIALIZE:
            if status in STEP_TRANSITIONS[record.status]:
                self.set(st, status)
        self.prepare(st)  # queued ones too: their config exists only in the process that died
