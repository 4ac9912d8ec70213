"""Loops: the iterations of a foreach or while step, each an inline run of the loop's body (DESIGN §3).

A loop step takes no permit itself; once it is RUNNING its :class:`Loop` creates iterations as
its concurrency allows, each a :class:`~legato.scope.Scope` over the body's steps with the loop
variables and ``loop.index`` in scope. Every iteration runs to its end; then the next starts. When
the last one ends the step's status aggregates them: any failed iteration fails the step (then
its failure mode applies), else any timed out, else any stopped, else it succeeded.

- **foreach** iterates over the cartesian product of its loop arrays, in Maestro's order (the
  first array varies fastest, as in ``ForeachStepRuntime``), at most ``concurrency`` at once.
  Iteration *n*'s values are computed from *n*, so nothing in memory grows with the number of
  iterations beyond the running ones.
- **while** checks its condition before every iteration, the first included, and runs one at a
  time; a body step's param or output named like a loop variable becomes that variable's value
  for the next iteration. Past ``max_iterations`` the step ends FATALLY_FAILED, saying so.

Each iteration is a row in storage (``loop/3``: iteration 3, counting from 1 as Maestro does; its
params are the iteration's loop variables, its status how it ended), written in the same commit as
its first steps and its end. A resumed loop counts the ended iterations, rebuilds the running
ones from their rows, and never runs a finished iteration again. A restarted one (a new run of
its instance) carries its succeeded iterations over and runs only the others again, each as a
new attempt of its row, inside which only the steps that did not complete run again.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import trio

from .cel import CelError, to_cel
from .model import AttemptRecord
from .scope import UNCONVERTIBLE, Scope
from .states import InstanceStatus, StepStatus, next_status
from .writer import crashpoint

__all__ = ["Loop", "Loops"]

S = StepStatus
I = InstanceStatus  # noqa: E741
# How an iteration's ending weighs in its loop step's status: the first present wins.
_AGGREGATE = (S.FATALLY_FAILED, S.TIMED_OUT, S.STOPPED)
_NAMED = 5  # how many failed iterations the loop step's message names


class Loop:
    """The iterations of one running foreach or while step."""

    __slots__ = ("run", "st", "ldef", "names", "arrays", "total", "created", "active", "rows", "counts",
                 "values", "concurrency", "failure", "failed", "exhausted", "redo", "history", "inherited")

    def __init__(self, run, st) -> None:
        self.run = run
        self.st = st
        self.ldef = ldef = st.sdef.loop
        values = dict((st.params or {}).get("loop_params") or {})
        self.names = list(values)
        # What every iteration's body sees besides its loop variables: the params around the loop
        # step and its own other params (ForeachStepRuntime.createForeachRunParams).
        own = {k: v for k, v in (st.params or {}).items() if k != "loop_params"}
        self.inherited = {**st.scope.params, **own} if own else st.scope.params
        self.created = 0  # iterations created so far (the next one's index)
        self.active: dict[int, Scope] = {}
        self.rows: dict[int, AttemptRecord] = {}
        self.counts: dict[StepStatus, int] = {}
        self.failure: tuple[StepStatus, str] | None = None  # the loop itself could not go on
        self.failed: list[int] = []  # the first failed iterations' numbers, for the message
        self.exhausted = False
        self.redo: deque[tuple[int, AttemptRecord]] = deque()  # iterations of an earlier run to run again
        self.history = None  # the attempts by scope path those are rebuilt from
        if ldef.kind == "foreach":
            self.arrays = [list(values[name]) for name in self.names]
            self.total = math.prod(len(a) for a in self.arrays) if self.arrays else 0
            self.concurrency = max(1, ldef.concurrency or 1)
            self.values = None
        else:
            self.arrays = []
            self.total = None
            self.concurrency = 1
            self.values = values  # the next iteration's loop variables

    # -- iterations ------------------------------------------------------------------------

    def iteration_values(self, index: int) -> dict[str, Any]:
        """Iteration ``index``'s loop variables (foreach: decoded from the index, first array fastest)."""
        if self.values is not None:
            return dict(self.values)
        out: dict[str, Any] = {}
        for name, array in zip(self.names, self.arrays):
            index, i = divmod(index, len(array))
            out[name] = array[i]
        return out

    def _stopping(self) -> bool:
        if self.run.ending is not None:
            return True
        scope = self.st.scope
        while scope is not None:
            if scope.ending is not None:
                return True
            scope = scope.parent
        return False

    def fill(self) -> None:
        """Start iterations while the concurrency allows; end the step once none is left."""
        while len(self.active) < self.concurrency and not self.exhausted:
            if self._stopping() or self.failure is not None:
                self.exhausted = True
                break
            if self.redo:
                self._again(*self.redo.popleft())
                continue
            if self.values is not None and self.counts.get(S.SUCCEEDED, 0) < sum(self.counts.values()):
                self.exhausted = True  # a while goes on only from a succeeded iteration
                break
            if self.total is not None:
                if self.created >= self.total:
                    self.exhausted = True
                    break
            elif not self._while_condition():
                self.exhausted = True
                break
            self._create(self.created)
            self.created += 1
        if not self.active and self.exhausted:
            self._finish()

    def _while_condition(self) -> bool:
        cond = self.ldef.condition
        index = self.created
        if cond is None:
            return False
        if cond.constant is not None:
            value = cond.constant
        else:
            values = self.values
            outer = self.st.scope
            context = {**outer.context(), **{name: to_cel(v) for name, v in values.items()}}
            context["params"] = to_cel({**self.inherited, **values})
            context["loop"] = to_cel({"index": index, **values})
            where = f"{self.st.sdef.pointer}/condition"
            try:
                value = cond.program.evaluate(context)
            except (CelError, *UNCONVERTIBLE) as exc:
                why = exc.located() if isinstance(exc, CelError) else f"a value cannot be converted ({exc})"
                self.failure = (S.INTERNALLY_FAILED, f"{where}: condition failed before iteration {index + 1}: {why}")
                return False
            if not isinstance(value, bool):
                self.failure = (S.INTERNALLY_FAILED, f"{where}: condition gave {value!r}, not a boolean")
                return False
        if value and index >= self.ldef.max_iterations:
            self.failure = (S.FATALLY_FAILED, f"the while loop reached its limit of {self.ldef.max_iterations} "
                                              "iterations with its condition still true")
            return False
        return value

    def scope_for(self, index: int, values: dict[str, Any]) -> Scope:
        st, run = self.st, self.run
        outer = st.scope
        return Scope(run, self.ldef.steps, prefix=f"{st.key}/{index + 1}", params={**self.inherited, **values},
                     resolved=run.resolved, parent=outer, owner=st, loop_values=values, index=index)

    def _create(self, index: int) -> None:
        run = self.run
        values = self.iteration_values(index)
        scope = self.scope_for(index, values)
        now = time.time()
        row = AttemptRecord(run.iid, scope.prefix, 1, S.RUNNING, run.instance.run_id, params=values,
                            created_at=now, started_at=now)
        run.batch.attempts[(scope.prefix, 1)] = row
        run.event(scope.prefix, 1, S.RUNNING.value)
        self.active[index] = scope
        self.rows[index] = row
        for st in scope.roots():
            st.satisfied = True
            run.materialize(st)
        if scope.live == 0:  # every root ended at once (params that fail to evaluate)
            run.dirty.append(scope)

    def _again(self, index: int, old: AttemptRecord) -> None:
        """Run iteration ``index`` of an earlier run again: a new attempt of its row, its scope
        rebuilt from its steps' attempts (the complete ones are carried over)."""
        run = self.run
        values = dict(old.params or {})
        scope = self.scope_for(index, values)
        now = time.time()
        row = AttemptRecord(run.iid, scope.prefix, old.attempt + 1, S.RUNNING, run.instance.run_id, params=values,
                            created_at=now, started_at=now)
        run.batch.attempts[(scope.prefix, row.attempt)] = row
        run.event(scope.prefix, row.attempt, S.RUNNING.value)
        self.active[index] = scope
        self.rows[index] = row
        run.restore(scope, self.history)
        if scope.live == 0:
            run.dirty.append(scope)

    def recall(self, history) -> None:
        """Take the iterations storage holds for this step: succeeded ones (and, within the
        current run, ended ones) are counted; running ones are rebuilt; the ones an earlier run
        ended without success run again, before any new one."""
        run, st = self.run, self.st
        rows = history.get(st.key, {})
        numbers = sorted(int(n) for n in rows if n.isdigit())
        current = run.instance.run_id
        for number in numbers:
            row = max(rows[str(number)], key=lambda r: r.attempt)
            index = number - 1
            if row.status.terminal and (row.status is S.SUCCEEDED or row.run_id >= current):
                if self.values is not None and isinstance(row.outputs.get("loop_params"), dict):
                    self.values = row.outputs["loop_params"]
                self._count(index, row.status)
            elif row.status.terminal:
                self.redo.append((index, row))
            else:
                values = dict(row.params or {})
                if self.values is not None:
                    self.values = values
                scope = self.scope_for(index, values)
                self.active[index] = scope
                self.rows[index] = row
                run.restore(scope, history)
                if scope.live == 0:
                    run.dirty.append(scope)
        self.created = numbers[-1] if numbers else 0
        if self.redo:
            self.history = history  # kept until they have run again

    def iteration_done(self, scope: Scope) -> None:
        run = self.run
        index = scope.index
        if self.active.pop(index, None) is None:
            return
        row = self.rows.pop(index)
        status, message = scope.outcome()
        if self.values is not None:  # while: what the body fed back becomes the next values
            self.values = _fed_back(scope, self.values)
            row.outputs = {"loop_params": self.values}
        row.status = status
        row.ended_at = time.time()
        row.message = message
        run.batch.attempts[(row.step_id, 1)] = row
        run.event(row.step_id, 1, status.value, message)
        self._count(index, status)
        crashpoint("iteration_done")
        self.fill()

    def _count(self, index: int, status: StepStatus) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        if status is S.FATALLY_FAILED and len(self.failed) < _NAMED:
            self.failed.append(index + 1)

    def _finish(self) -> None:
        run, st = self.run, self.st
        done = sum(self.counts.values())
        outputs: dict[str, Any] = {"iterations": done, "counts": {s.value: n for s, n in self.counts.items()}}
        if self.values is not None:
            outputs["loop_params"] = self.values
        st.record.outputs = outputs
        st.loop = None
        if self.failure is not None:
            status, message = self.failure
        else:
            status = next((s for s in _AGGREGATE if self.counts.get(s)), S.SUCCEEDED)
            message = ""
            if status is S.FATALLY_FAILED:
                n = self.counts[status]
                named = ", ".join(map(str, self.failed)) + (", …" if n > len(self.failed) else "")
                message = f"{n} of {done} iterations failed ({named})"
            elif status is not S.SUCCEEDED:
                message = f"{self.counts[status]} of {done} iterations {status.value}"
        if status is S.SUCCEEDED:
            run.set(st, S.FINISHING)
        elif status is S.FATALLY_FAILED:
            ended = next_status(S.FATALLY_FAILED, 0, 0, st.sdef.failure_mode, False)
            if ended is not status:
                message = f"{message} (IGNORE_FAILURE: COMPLETED_WITH_ERROR)"
            status = ended
        run.end_step(st, status, message)


class Loops:
    """Starting and resuming loop steps (a mixin of :class:`legato.instance.InstanceRun`)."""

    def start_loop(self, st) -> None:
        """``st`` (a foreach/while step) is STARTING: run it, starting its first iterations (in a
        new run of its instance, after carrying over the iterations an earlier run finished)."""
        self.set(st, S.RUNNING)
        loop = st.loop = Loop(self, st)
        if self.history is not None and st.key in self.history:
            loop.recall(self.history)
        self._loop_deadline(st)
        loop.fill()

    def _loop_deadline(self, st) -> None:
        """The loop step's own ``timeout``, from its STARTING (as a leaf step's)."""
        timeout = st.sdef.timeout
        if timeout is None or st.loop is None:
            return
        left = max(0.0, timeout - (time.time() - (st.record.started_at or time.time())))
        self.nursery.start_soon(self._loop_timer, st, st.attempt, left)

    async def _loop_timer(self, st, attempt: int, seconds: float) -> None:
        await trio.sleep(seconds)
        self.post(("loop_timeout", st, attempt))

    def loop_timed_out(self, st, attempt: int) -> None:
        """The loop step's timeout fired: its running iterations are stopped (TIMED_OUT), no new
        one starts, and the step ends TIMED_OUT once they have."""
        loop = st.loop
        if loop is None or st.attempt != attempt or st.finished:
            return
        message = f"timed out after {st.sdef.timeout:g}s"
        loop.failure = (S.TIMED_OUT, message)
        for scope in list(loop.active.values()):
            self.end_scope(scope, I.TIMED_OUT, message)
        loop.fill()

    def restore_loop(self, st, history) -> None:
        """``st`` was STARTING or RUNNING when the previous owner stopped: count its ended
        iterations, rebuild the running ones, go on with the rest."""
        if not self.ready(st):
            return
        if st.record.status is S.STARTING:
            self.start_loop(st)
            return
        loop = st.loop = Loop(self, st)
        loop.recall(history)
        self._loop_deadline(st)
        self.settle()
        if st.loop is loop:
            loop.fill()


def _fed_back(scope: Scope, values: dict[str, Any]) -> dict[str, Any]:
    """The loop variables after an iteration of a while: a body step's param or output named like
    one replaces it (outputs over params; later steps of the body over earlier ones)."""
    out = dict(values)
    for sdef in scope.order:
        st = scope.steps[sdef.id]
        record = st.record
        if record is None or not st.finished:
            continue
        for name in values:
            if record.params and name in record.params:
                out[name] = record.params[name]
            if record.outputs and name in record.outputs:
                out[name] = record.outputs[name]
    return out
