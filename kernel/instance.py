"""The instance task: one per running instance, deciding what runs next (DESIGN §5).

It ties the parts together: the lease (:mod:`legato.ownership`), the writer
(:mod:`legato.writer`), the scopes and their join counters (:mod:`legato.scope`), the step tasks
(:mod:`legato.stepstart` creates attempts and gives out permits, :mod:`legato.steptask` runs
them), the outcome policy (:mod:`legato.outcome`), recovery
(:mod:`legato.recovery`) and loops (:mod:`legato.loops`). Step tasks report through an inbox; the
loop handles every message of a tick, commits the tick as one transaction, then launches what the
commit allowed: a step's work starts only once its STARTING is durable, and successors are
created in the same commit as their predecessor's end.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable

import trio

from .actions import InstanceActions, RestartPlan
from .definition import Definition, resolve_attributes
from .fromforeach import FromForeach
from .loops import Loops
from .model import Event, InstanceRecord
from .outcome import OutcomePolicy
from .ownership import Ownership
from .params import ParamError, ValueBudget
from .permits import open_permits
from .recovery import Recovery, group_history
from .scope import Scope
from .states import InstanceStatus, StepStatus, instance_status_from
from .stepstart import StepStart
from .steptask import StepTasks
from .writer import Writer, crashpoint

__all__ = ["InstanceRun", "StartError"]

S = StepStatus
I = InstanceStatus  # noqa: E741


class StartError(Exception):
    """A start request is invalid (unknown or immutable param override, a param that fails to
    evaluate). ``pointer`` locates it in the definition."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(f"{pointer}: {message}" if pointer else message)
        self.message = message
        self.pointer = pointer


class InstanceRun(Writer, Ownership, StepStart, StepTasks, OutcomePolicy, Recovery, Loops, FromForeach,
                  InstanceActions):
    """The task that drives one instance: the scheduling loop, the step tasks, the writes."""

    def __init__(self, engine, definition: Definition, instance: InstanceRecord,
                 observer: Callable[[Event], None] | None, *, restart: bool = False) -> None:
        self.engine = engine
        self.definition = definition
        self.instance = instance
        self.iid = instance.instance_id
        self.observer = observer
        try:  # timeouts and retry policies written with `${param}`, read with this instance's params
            self.timeout, self.resolved = resolve_attributes(definition, instance.params)
        except ParamError as exc:
            raise StartError(exc.message, exc.pointer) from None
        # Secrets: None (no masking pass anywhere) unless the definition declares a secret param.
        self.secrets = None
        self.streams: dict[tuple[str, int, str], Any] = {}
        self.workflow_params = instance.params  # what steps see: secret references resolved
        if definition.has_secrets:
            from .secrets import Secrets

            self.secrets = Secrets()
        self.workflow_plain = {
            "id": definition.workflow_id, "version": instance.version, "instance_id": self.iid,
            "run_id": instance.run_id, "run_ts": _utc(instance.run_ts if instance.run_ts is not None else instance.created_at), "initiator": instance.initiator,
        }
        self.root = Scope(self, definition.steps, params=instance.params, resolved=self.resolved)
        self.inbox: deque = deque()
        self.wake = trio.Event()
        self.to_launch: list = []
        self.permit_queue: deque = deque()
        self.running = 0  # leaf steps launched or about to be: what step_concurrency caps
        self.retrying: dict[str, tuple[trio.CancelScope, Any]] = {}
        self.limit = definition.step_concurrency or 1_000_000
        self.limit_name = ("instance_step_concurrency" if definition.step_concurrency is not None
                           and definition.step_concurrency == definition.instance_step_concurrency
                           else "step_concurrency")
        self.permits = None  # legato.permits.Permits when steps share permits with other instances
        self.asking = 0  # steps the instance let through that wait for those (permits.queue)
        self.ending: InstanceStatus | None = None  # STOPPED / FAILED (kill, fail-immediately) / TIMED_OUT
        self.end_message = ""
        self.dirty: list[Scope] = []  # iterations whose last live step just ended
        self.releasing = 0  # StepType.release calls under way
        self.released = trio.Event()  # set when the last of them returns
        self.budget = ValueBudget()  # what this run's step params may compute, together
        self.nursery: trio.Nursery | None = None
        self.history = None  # while a scope is rebuilt from storage: its attempts by scope path
        self.foreach_values: dict[tuple[str, str, str], list] = {}  # what getFromForeach reads (legato.loops)
        self.foreach_refs: dict[int, tuple] = {}  # step definition -> the getFromForeach calls of its params
        self.foreach_loaded: set[tuple[str, int]] = set()  # attempts whose getFromForeach reads were loaded
        self.restarting = restart
        self._init_writer()
        self._init_actions()

    @property
    def steps(self) -> dict:
        """The workflow's (top-level) steps by id, with their runtime state."""
        return self.root.steps

    # -- public actions ----------------------------------------------------------------------

    def stop(self, reason: str = "stopped by user") -> None:
        """Stop the instance: running steps are cancelled (STOPPED), nothing new starts, the
        instance ends STOPPED."""
        self.post(("end", I.STOPPED, reason))

    def kill(self, reason: str = "killed by user") -> None:
        """Like stop, but the instance ends FAILED."""
        self.post(("end", I.FAILED, reason))

    def post(self, message: tuple) -> None:
        self.inbox.append(message)
        self.wake.set()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> InstanceRecord:
        try:
            return await self._run(task_status)
        except BaseExceptionGroup as group:
            # Step failures are data; what gets here is a kernel or storage error. Hand it to the
            # caller as itself, never as an ExceptionGroup.
            raise _first_leaf(group) from None

    async def _run(self, task_status) -> InstanceRecord:
        if self.instance.status.terminal and not self.restarting:
            task_status.started(self)
            return self.instance
        storage, engine = self.engine.storage, self.engine
        if self.secrets is not None:  # before the lease: an unresolvable secret changes nothing
            from .engine import resolve_workflow_secrets

            self.workflow_params = resolve_workflow_secrets(self.definition, self.instance.params,
                                                            engine.compiler, self.secrets)
        # A restart asked through an action made the next run already (CREATED, a later run_id):
        # it runs as a restart, as its restart action asked (legato.actions).
        queued_restart = self.instance.status is I.CREATED and self.instance.run_id > 1
        self.restarting = self.restarting or queued_restart
        self.generation = await self.acquire()
        self.batch.generation = self.generation
        attempts = await storage.get_attempts(self.iid) if self.instance.status is not I.CREATED \
            or self.restarting else []
        plan = await RestartPlan.of(storage, self.instance) if queued_restart or (
            self.instance.run_id > 1 and not self.restarting) else RestartPlan()
        self.permits = await open_permits(self, attempts)
        if self.restarting and not queued_restart:
            self._new_run()
        groups = plan.filter(group_history(attempts), self.definition, self.instance.run_id, self.root.steps)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self.heartbeat)
                timeout = self.timeout
                if self.restarting:
                    self.set_instance(I.IN_PROGRESS)
                    self.batch.events[-1].message = f"run {self.instance.run_id}: {plan.words()} by {engine.owner}"
                    if plan.action is not None:
                        self.batch.actions.append((plan.action.id, f"applied: run {self.instance.run_id} started "
                                                                   f"by {engine.owner}"))
                    if timeout:
                        nursery.start_soon(self._workflow_deadline, timeout)
                    self.restore(self.root, groups)
                    self._create_roots()
                elif self.instance.status is I.CREATED:
                    self.set_instance(I.IN_PROGRESS)
                    if timeout:
                        nursery.start_soon(self._workflow_deadline, timeout)
                    for st in self.root.roots():
                        st.satisfied = True
                        self.materialize(st)
                else:
                    self.event(None, 0, "IN_PROGRESS", f"resumed by {engine.owner}")
                    if timeout:
                        left = timeout - (time.time() - (self.instance.started_at or time.time()))
                        nursery.start_soon(self._workflow_deadline, max(0.0, left))
                    self.restore(self.root, groups)
                    self._create_roots()
                self.settle()
                task_status.started(self)
                applier = engine.applier
                if applier is not None and (self.iid in applier.waiting or self.instance.run_id > 1 or attempts):
                    applier.poke()  # actions may have waited for someone to run it (resumed, restarted)
                await self._loop(nursery)
                nursery.cancel_scope.cancel()  # the heartbeat and the workflow deadline
        except BaseException:
            if self.lost is not None:
                raise self.lost from None
            raise
        if self.lost is not None:
            raise self.lost
        await self.release_lease()
        return self.instance

    def _create_roots(self) -> None:
        """Roots a restart runs again from the beginning have no attempt of this run yet: create them."""
        for st in self.root.roots():
            if st.record is None:
                st.satisfied = True
                self.materialize(st)

    def _new_run(self) -> None:
        """A restart: the instance's next run, from CREATED again (a run is a lifecycle of its own)."""
        inst = self.instance
        inst.run_id += 1
        inst.status = I.CREATED
        inst.started_at = inst.ended_at = None
        inst.message = ""
        self.workflow_plain["run_id"] = inst.run_id

    async def _loop(self, nursery) -> None:
        urgent = True  # the roots (or a resumed run's steps) are waiting for their first commit
        while True:
            if self.inbox:
                while self.inbox:
                    self.handle(self.inbox.popleft())
                self.settle()
                urgent = True
            if self.root.live == 0:
                if self.releases or self.releasing:
                    await self.wait_released()
                self._finish()
                await self.commit()
                return
            # Messages (results, retries, actions) and launches commit now; what only asked to be
            # flushed soon (RUNNING, handles, log lines) waits for its deadline or the next tick.
            due = self.flush_at is not None and trio.current_time() >= self.flush_at
            if self.batch and (urgent or due or self.to_launch):
                await self.commit()
            urgent = False
            if self.to_launch:
                crashpoint("before_launch")
                launch, self.to_launch = self.to_launch, []
                for st in launch:
                    st.cancel = trio.CancelScope()  # before the task runs, so a stop can reach it
                    nursery.start_soon(self.run_step, st, st.attempt)
            if not self.inbox:
                deadline = self.flush_at if self.flush_at is not None else math.inf
                with trio.move_on_at(deadline):
                    await self.wake.wait()
                self.wake = trio.Event()

    def handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "result":
            self.on_result(message[1], message[2], message[3])
        elif kind == "retry":
            st = message[1]
            self.retrying.pop(st.key, None)
            if self.ending is None and st.scope.ending is None:
                self.materialize(st)
            else:
                self.leave(st)
        elif kind == "permit":  # the store granted a step's shared permits (legato.permits)
            self.permitted(message[1], message[2])
        elif kind == "end":
            self.end(message[1], message[2])
        elif kind == "action":
            self.apply_action(message[1])
        elif kind == "loop_timeout":
            self.loop_timed_out(message[1], message[2])
        elif kind == "loaded":  # what a step's getFromForeach reads is there: evaluate its params
            st = message[1]
            if self.ending is None and st.scope.ending is None:
                self.prepare(st)
            else:
                self.set(st, S.STOPPED, self.end_message or st.scope.message or "stopped")
                st.finished = True
                self.leave(st)
        # "flush" needs nothing: waking the loop commits the pending batch

    def _finish(self) -> None:
        root = self.root
        endings = []
        if root.failed:
            endings.append(I.FAILED)
        if root.timed_out:
            endings.append(I.TIMED_OUT)
        if self.ending is not None:
            endings.append(self.ending)
        if any(st.finished and st.record is not None and st.record.status is S.STOPPED for st in root.steps.values()):
            endings.append(I.STOPPED)  # a step an action stopped while the others went on
        final = instance_status_from(endings)
        self.finish_actions(final)
        message = self.end_message or root.message
        if final is I.FAILED and not message:
            failed = [st.sdef.id for st in root.steps.values() if st.record and st.finished and st.record.status.failed]
            message = f"step(s) failed: {', '.join(failed)}" if failed else "failed"
        self.set_instance(final, message)

    # -- live steps and the end of scopes ------------------------------------------------------

    def enter(self, st) -> None:
        """``st`` is in play (created, waiting, running or retrying): its scope is not over."""
        if not st.live:
            st.live = True
            st.scope.live += 1

    def leave(self, st) -> None:
        """``st`` ended for good (or will never run again in this run)."""
        if st.live:
            st.live = False
            scope = st.scope
            scope.live -= 1
            if scope.live == 0 and scope.owner is not None:
                self.dirty.append(scope)

    def settle(self) -> None:
        """End the iterations whose last live step ended (which may start or end others)."""
        dirty = self.dirty
        while dirty:
            scope = dirty.pop(0) if len(dirty) > 1 else dirty.pop()  # in the order they ended
            if scope.live == 0 and scope.owner is not None and scope.owner.loop is not None:
                scope.owner.loop.iteration_done(scope)

    def end(self, status: InstanceStatus, reason: str) -> None:
        """Stop everything now; the instance ends ``status`` once running steps have reported."""
        if self.ending is not None and status is not I.FAILED:
            return
        self.ending = status
        self.end_message = reason
        self._stop(self.root, status, reason)

    def end_scope(self, scope: Scope, status: InstanceStatus, reason: str) -> None:
        """End one iteration now (FAIL_IMMEDIATELY inside a loop's body): its running steps are
        stopped, nothing new starts in it; its loop goes on with the other iterations."""
        scope.ending = status
        scope.message = reason
        self._stop(scope, status, reason)

    def _stop(self, scope: Scope, status: InstanceStatus, reason: str) -> None:
        # MaestroTask.cancel: what the workflow's timeout ends is TIMED_OUT, anything else STOPPED.
        stopped = S.TIMED_OUT if status is I.TIMED_OUT else S.STOPPED
        scopes = [scope]
        while scopes:
            sc = scopes.pop()
            if sc is not scope and sc.ending is None:  # an iteration of a loop inside what ends
                sc.ending, sc.message = status, reason
            for st in sc.steps.values():
                if st.cancel is not None:
                    st.cancel.cancel()
                waiting = self.retrying.pop(st.key, None)
                if waiting is not None:
                    waiting[0].cancel()
                    self.leave(st)
                if st.loop is not None:
                    scopes.extend(st.loop.active.values())
        inside = _inside(scope)
        self.stop_waiting(inside, stopped, reason)
        launch, self.to_launch = self.to_launch, []
        for st in launch:  # STARTING but never launched
            if inside(st):
                self.set(st, stopped, reason)
                st.finished = True
                self.running -= 1
                self.give_back_permits(st, st.attempt)
                self.leave(st)
            else:
                self.to_launch.append(st)

    async def _workflow_deadline(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.post(("end", I.TIMED_OUT, f"workflow timed out after {seconds:g}s"))


def _inside(scope: Scope) -> Callable[[Any], bool]:
    """Whether a step belongs to ``scope`` or to a scope nested in it."""
    if scope.parent is None:
        return lambda st: True

    def inside(st) -> bool:
        sc = st.scope
        while sc is not None:
            if sc is scope:
                return True
            sc = sc.parent
        return False

    return inside


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _utc(ts: float):
    import datetime

    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
