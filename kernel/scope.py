"""A scope: one DAG being run — the workflow's steps, or one iteration of a loop's body.

A scope knows its steps' runtime state (:class:`Step`), counts the steps still in play (``live``:
created and not yet ended for good; a scope whose count drops to zero is over), and applies
Maestro's join-all, satisfied-any rule when a step ends (:meth:`Scope.release`, DESIGN §3). It
builds the CEL context its expressions see, once and grown as its steps finish. Everything else
(writes, permits, step tasks) belongs to the instance run that owns the scope.

Storage names a step of a nested scope by its path: ``loop/3/job`` is step ``job`` of iteration 3
of ``loop`` (iterations count from 1, like Maestro's iteration ids; step ids never hold ``/``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .cel import CelError, to_cel
from .definition import StepDef
from .model import AttemptRecord
from .states import InstanceStatus, StepStatus

if TYPE_CHECKING:
    from .instance import InstanceRun
    from .loops import Loop

__all__ = ["Step", "Scope", "UNCONVERTIBLE", "cel_entry"]

S = StepStatus
I = InstanceStatus  # noqa: E741

# What converting a value for CEL raises when the value is out of CEL's range (an integer beyond
# 64 bits) or too deep: values are checked where they enter, this is the net for older records.
UNCONVERTIBLE = (ValueError, OverflowError, RecursionError)


class Step:
    """The runtime state of one step of one scope."""

    __slots__ = (
        "sdef", "scope", "key", "record", "attempt", "remaining", "satisfied", "params", "config",
        "errors", "platform", "timeouts", "cancel", "finished", "live", "reattach", "conditional", "loop",
        "signals",
    )

    def __init__(self, sdef: StepDef, scope: "Scope", key: str) -> None:
        self.sdef = sdef
        self.scope = scope
        self.key = key  # the step's id in storage: its path from the workflow's top
        self.record: AttemptRecord | None = None
        self.attempt = 0
        self.remaining = len(sdef.predecessors)
        self.satisfied = False
        self.params: dict[str, Any] | None = None
        self.config: Any = None
        self.errors = self.platform = self.timeouts = 0
        self.cancel = None  # the running attempt's trio.CancelScope
        self.finished = False
        self.live = False  # counted in its scope's ``live``
        self.reattach: Any = None  # the handle to follow instead of starting the work anew
        self.conditional = any(cond.constant is None for _, cond in sdef.successors)  # edges to evaluate
        self.loop: "Loop | None" = None  # a foreach/while step's iterations while it runs
        self.signals: dict[str, Any] | None = None  # the params of the signals it waited for, by name


class Scope:
    """The steps of one DAG, their join counters and the CEL names their expressions see."""

    __slots__ = (
        "run", "prefix", "steps", "order", "params", "loop_values", "index", "parent", "owner",
        "live", "finished", "failed", "timed_out", "ending", "message", "_cel", "_synced",
    )

    def __init__(self, run: "InstanceRun", sdefs: list[StepDef], *, prefix: str = "",
                 params: dict[str, Any], resolved: dict[str, StepDef] | None = None,
                 parent: "Scope | None" = None, owner: Step | None = None,
                 loop_values: dict[str, Any] | None = None, index: int = 0) -> None:
        self.run = run
        self.prefix = prefix
        head = f"{prefix}/" if prefix else ""
        resolved = resolved or {}
        self.steps = {s.id: Step(resolved.get(s.id, s), self, head + s.id) for s in sdefs}
        self.order = sdefs
        self.params = params  # what `${name}` and bare names read: workflow params, loop variables
        self.loop_values = loop_values  # this iteration's loop variables (None: the workflow's scope)
        self.index = index  # this iteration's 0-based index (``loop.index``)
        self.parent = parent
        self.owner = owner  # the loop step this scope is an iteration of
        self.live = 0
        self.finished: list[Step] = []  # in the order they finished: the CEL context grows from it
        self.failed = False  # a step failed for good (not ignored)
        self.timed_out = False  # a step ended TIMED_OUT
        self.ending: InstanceStatus | None = None  # this iteration is being ended (FAIL_IMMEDIATELY)
        self.message = ""
        self._cel: dict[str, Any] | None = None
        self._synced = 0

    def roots(self) -> list[Step]:
        return [st for st in self.steps.values() if st.remaining == 0]

    def outcome(self) -> tuple[StepStatus, str]:
        """How this scope (an iteration) ended: any failed step fails it, then a timed-out one,
        then a stop (FAILED > TIMED_OUT > STOPPED > SUCCEEDED)."""
        if self.failed:
            failed = [st.sdef.id for st in self.steps.values() if st.finished and st.record and st.record.status.failed
                      and st.record.status not in (S.STOPPED, S.TIMED_OUT)]
            return S.FATALLY_FAILED, self.message or f"step(s) failed: {', '.join(failed)}"
        if self.timed_out:
            return S.TIMED_OUT, self.message or "a step timed out"
        ending = self.ending or self.run.ending
        if ending is I.TIMED_OUT:
            return S.TIMED_OUT, self.message or self.run.end_message
        if ending is not None:
            return S.STOPPED, self.message or self.run.end_message or "stopped"
        return S.SUCCEEDED, ""

    # -- the CEL names ---------------------------------------------------------------------

    def context(self) -> dict[str, Any]:
        """The CEL names an expression of this scope sees: the params (bare and as ``params``),
        ``steps`` (finished ones, of this scope and upstream of its loop outside it),
        ``workflow``, and inside a loop ``loop`` (``index`` and the loop variables).

        Built on first use and grown as steps finish, so each step is converted to CEL once."""
        if self._cel is None:
            if self.parent is None:
                params = self.params
                self._cel = {name: to_cel(value) for name, value in params.items()}
                self._cel.update(params=to_cel(params), steps=to_cel({}),
                                 workflow=to_cel(self.run.workflow_plain))
            else:
                outer = self.parent.context()
                values = self.loop_values or {}
                around = self.parent.params
                # bare names: what this scope adds to the params around it (loop variables, the
                # loop step's own params)
                added = {k: v for k, v in self.params.items() if k not in around or around[k] is not v}
                self._cel = {**outer, **{name: to_cel(value) for name, value in added.items()}}
                steps = to_cel({})
                steps.update(outer["steps"])
                self._cel.update(params=to_cel(self.params), steps=steps,
                                 loop=to_cel({"index": self.index, **values}))
        if self._synced < len(self.finished):
            steps = self._cel["steps"]
            for st in self.finished[self._synced:]:
                steps[to_cel(st.sdef.id)] = cel_entry(st.record)
            self._synced = len(self.finished)
        return self._cel

    def recontext(self, st: Step) -> None:
        """``st`` ended otherwise than its entry in the CEL context says: convert it again."""
        if self._cel is not None and self._synced >= len(self.finished):
            self._cel["steps"][to_cel(st.sdef.id)] = cel_entry(st.record)

    # -- edges -----------------------------------------------------------------------------

    def edges(self, st: Step, status: StepStatus) -> dict[str, bool] | str:
        """The values of ``st``'s conditional edges, as they see the step ended ``status``; or
        the located reason the first of them could not be evaluated."""
        record = st.record
        prior, record.status = record.status, status  # what `steps.<id>.status` reads
        try:
            values: dict[str, bool] = {}
            context = self._edge_context(st)
            for target, cond in st.sdef.successors:
                if cond.constant is None:
                    value = self.edge_value(st, target, cond, context)
                    if isinstance(value, str):
                        return value
                    values[target] = value
            return values
        finally:
            record.status = prior

    def _edge_context(self, st: Step) -> dict[str, Any]:
        """What ``st``'s edge conditions see: what params see, and the source step's own params as
        bare names, over workflow params of the same name (Maestro's next conditions)."""
        context = self.context()
        if st.params:
            own = context["steps"][to_cel(st.sdef.id)]["params"]
            context = {**context, **{str(name): value for name, value in own.items()}}
        return context

    def edge_value(self, st: Step, target: str, cond, context: dict[str, Any] | None = None) -> bool | str:
        """Evaluate the condition of the edge ``st -> target``: a boolean, or why not (located)."""
        if context is None:
            context = self._edge_context(st)
        where = f"{st.sdef.pointer}/transition/successors/{target}"
        try:
            value = cond.program.evaluate(context)
        except (CelError, *UNCONVERTIBLE) as exc:
            why = exc.located() if isinstance(exc, CelError) else f"a value cannot be converted ({exc})"
            return f"{where}: condition failed: {why}"
        if not isinstance(value, bool):
            return f"{where}: condition gave {value!r}, not a boolean"
        return value

    def release(self, done: Step, edges: dict[str, bool] | None = None) -> None:
        """Join-all, satisfied-any: count ``done`` as finished for each successor (worklist, so a
        long run of UNSATISFIED steps does not recurse). ``edges`` are the values of ``done``'s
        conditional edges; without them (a resumed run) they are evaluated again: pure functions
        of durable outputs, they gave these values before. One that fails now (a value an older
        Legato stored) cannot blame its source, whose end is durable: the scope fails, naming
        the edge, and the target is never created."""
        run = self.run
        steps = self.steps
        work = [done]
        while work:
            st = work.pop()
            passed = st.record.status is not S.UNSATISFIED
            for target, cond in st.sdef.successors:
                nxt = steps[target]
                if passed and not nxt.satisfied:
                    if cond.constant is not None:
                        nxt.satisfied = cond.constant
                    elif edges is not None and st is done:
                        nxt.satisfied = edges[target]
                    else:
                        value = self.edge_value(st, target, cond)
                        if isinstance(value, str):  # the source's end is durable: fail the scope,
                            self.failed = True  # saying where; the target stays NOT_CREATED
                            self.message = self.message or value
                            continue
                        nxt.satisfied = value
                nxt.remaining -= 1
                if nxt.remaining == 0 and nxt.record is None:  # (a resumed run restores created steps itself)
                    if nxt.satisfied:
                        run.materialize(nxt)
                    elif run.ending is None and self.ending is None:
                        nxt.attempt += 1  # 1, or after an earlier run's attempts (a restart from the beginning)
                        now = time.time()
                        nxt.record = AttemptRecord(run.iid, nxt.key, nxt.attempt, S.NOT_CREATED, run.instance.run_id,
                                                   created_at=now, ended_at=now)
                        run.set(nxt, S.UNSATISFIED, "no incoming condition was true")
                        nxt.finished = True
                        self.finished.append(nxt)
                        work.append(nxt)


def cel_entry(record: AttemptRecord):
    """What ``steps.<id>`` holds for a finished step, converted for CEL."""
    entry = {
        "status": record.status.value, "params": record.params or {}, "outputs": record.outputs,
        "attempt": record.attempt, "end_time": record.ended_at or 0.0,
    }
    try:
        return to_cel(entry)
    except UNCONVERTIBLE:
        # Stored before outputs were checked on the way in: leave them out, so that
        # an expression reading them fails (located) instead of the whole instance.
        return to_cel({**entry, "params": {}, "outputs": {}})
