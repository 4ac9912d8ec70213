"""Creating and starting steps: a new attempt walks CREATED → … → EVALUATING_PARAMS (its params
evaluated once, checked by its step type's schema), then waits for a permit and becomes STARTING;
its step task is launched once that is durable (:mod:`legato.instance`). A loop step takes no
permit: its body's steps do.

Permits come in two layers. The instance counts its own steps in memory (``limit``: the smaller
of ``step_concurrency`` and ``instance_step_concurrency``, FIFO in ``permit_queue``); a step it
lets through then takes what it shares with other instances from the store (:mod:`legato.permits`:
the workflow's step_concurrency, its tree's instance_step_concurrency, its tags' permits), waiting
in ``permits.queue`` meanwhile. Without shared permits that second layer costs nothing.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from .model import AttemptRecord
from .params import ParamError, evaluate_params, needs_cel
from .scope import UNCONVERTIBLE
from .states import StepStatus

__all__ = ["StepStart"]

S = StepStatus


class StepStart:
    """Attempts and permits (a mixin of :class:`legato.instance.InstanceRun`)."""

    def materialize(self, st) -> None:
        """Create a new attempt and walk it to STARTING (or WAITING_FOR_PERMITS)."""
        if self.ending is not None or st.scope.ending is not None:
            return
        st.attempt += 1
        now = time.time()
        st.record = AttemptRecord(self.iid, st.key, st.attempt, S.CREATED, self.instance.run_id, created_at=now)
        self.batch.attempts[(st.key, st.attempt)] = st.record
        self.event(st.key, st.attempt, "CREATED")
        self.set(st, S.INITIALIZED)
        self.set(st, S.WAITING_FOR_SIGNALS)
        self.enter(st)
        if st.sdef.signal_dependencies:  # it goes on once its signals are there (legato.signalwait)
            st.signals = None
            self.wait_for_signals(st)
            return
        self.set(st, S.EVALUATING_PARAMS)
        self.prepare(st)

    def prepare(self, st) -> None:
        """EVALUATING_PARAMS (or a restored WAITING_FOR_PERMITS): make the attempt ready, then
        queue it for a permit (a loop step takes none: its body's steps do)."""
        if st.params is None and st.sdef.params and self.needs_iterations(st):
            self.nursery.start_soon(self.load_iterations, st)  # then ("loaded", st) comes back here
            return
        if not self.ready(st):
            return
        if st.record.status is not S.WAITING_FOR_PERMITS:
            self.set(st, S.WAITING_FOR_PERMITS)
        if st.sdef.loop is not None:
            st.record.started_at = time.time()
            self.set(st, S.STARTING)
            self.start_loop(st)
        elif self.running + self.asking < self.limit:
            self._admit(st)
        else:
            self.permit_queue.append(st)
            if self.limit:  # (0: the instance is being handed back, nothing to explain)
                st.record.message = (f"waiting for a permit: {self.limit} of this instance's steps are running "
                                     f"({self.limit_name})")
                self.batch.attempts[(st.key, st.attempt)] = st.record

    def ready(self, st) -> bool:
        """Evaluate the step's params once (later attempts and resumes reuse the values) and
        check them against the step type's schema (``st.config``). Every attempt that is to run
        or be followed passes here, fresh or restored after a crash. False when the attempt ended
        INTERNALLY_FAILED instead: params that fail to evaluate are Maestro's internal error
        (MaestroTask.doExecute's catch, StepRuntimeSummary.markInternalError), never retried nor
        ignored."""
        try:
            if st.params is None:
                st.params = self._evaluate_step_params(st)
            if st.config is None and st.sdef.loop is None:
                st.config = self._validate_config(st)
        except ParamError as exc:
            message = f"{st.sdef.pointer}/params{exc.pointer}: {exc.message}"
            if st.record.status is not S.EVALUATING_PARAMS:
                # valid when this attempt was prepared, refused now: the step type changed under it
                message += " (the params were accepted before a restart)"
            self.end_step(st, S.INTERNALLY_FAILED, message)
            return False
        st.record.params = st.params
        return True

    def _admit(self, st) -> None:
        """The instance's own permit is ``st``'s: start it, or first take its shared permits."""
        permits = self.permits
        if permits is not None and permits.wait(st):
            self.asking += 1
            return
        self._starting(st)

    def _starting(self, st) -> None:
        """Take a permit: ``running`` counts steps launched or about to be."""
        st.record.started_at = time.time()
        if st.record.message and st.record.message.startswith("waiting for a permit"):
            st.record.message = ""
        self.set(st, S.STARTING)
        self.to_launch.append(st)
        self.running += 1

    def permitted(self, st, attempt: int) -> None:
        """The store granted ``st``'s attempt its shared permits (a message from
        :class:`legato.permits.Permits`)."""
        permits = self.permits
        key = (st.key, attempt)
        permits.granted.discard(key)
        permits.held.add(key)
        if permits.queue.pop(key, None) is None:  # stopped meanwhile
            permits.release(key)
            return
        self.asking -= 1
        if self.limit == 0:  # being handed back: the attempt stays WAITING_FOR_PERMITS, durably
            permits.release(key)
            return
        self._starting(st)

    def grant_permits(self) -> None:
        while self.permit_queue and self.running + self.asking < self.limit and self.ending is None:
            self._admit(self.permit_queue.popleft())

    def give_back_permits(self, st, attempt: int) -> None:
        """``st``'s attempt ended: what it shares goes back in the commit of its end."""
        if self.permits is not None:
            self.permits.release((st.key, attempt))

    def stop_waiting(self, inside, stopped: StepStatus, reason: str) -> None:
        """End ``stopped`` the attempts of the steps ``inside`` accepts that wait for a permit."""
        queue, self.permit_queue = self.permit_queue, deque()
        waiting = []
        for st in queue:
            (waiting if inside(st) else self.permit_queue).append(st)
        if self.permits is not None:
            asked = self.permits.stop(inside)
            self.asking -= len(asked)
            waiting += asked
        if self.signal_waits is not None:
            waiting += self.signal_waits.stop(inside)
        for st in waiting:
            self.set(st, stopped, reason)
            st.finished = True
            self.leave(st)

    def _evaluate_step_params(self, st) -> dict[str, Any]:
        sdef = st.sdef
        loop = sdef.loop
        if not sdef.params and loop is None:
            return {}
        scope = st.scope
        try:
            values: dict[str, Any] = {}
            if sdef.params:
                if loop is None:
                    step_type = self.engine.plugins.step_types.types[sdef.type]
                    raw, argv = step_type.raw_params, step_type.argv_params
                else:
                    raw = argv = frozenset()
                with self.evaluating_with_iterations(st):
                    values = evaluate_params(sdef.params, self.engine.compiler, scope=scope.params,
                                             context=self.cel_names(st) if needs_cel(sdef.params.values()) else None,
                                             raw=raw, argv=argv, budget=self.budget)
            if loop is not None and loop.loop_params:
                try:
                    values["loop_params"] = evaluate_params(
                        loop.loop_params, self.engine.compiler, scope={**scope.params, **values},
                        context=scope.context() if needs_cel(loop.loop_params.values()) else None,
                        budget=self.budget)
                except ParamError as exc:
                    raise ParamError(exc.message, f"/loop_params/value{exc.pointer}") from None
            return values
        except ParamError:
            raise
        except UNCONVERTIBLE as exc:  # a value stored before values were checked on the way in
            raise ParamError(f"a value this step's params see cannot be converted for CEL ({exc})") from None

    def _validate_config(self, st) -> Any:
        """The step's params as the step type's ``Params`` model (None when it declares none)."""
        step_type = self.engine.plugins.step_types.types[st.sdef.type]
        if step_type.Params is None:
            return None
        if not st.params:  # most steps of a large run: one validated config per step type, shared
            shared = self.engine.empty_configs.get(st.sdef.type)
            if shared is not None:
                return shared
        import pydantic

        try:
            config = step_type.Params.model_validate(st.params)
            if not st.params:
                self.engine.empty_configs[st.sdef.type] = config
            return config
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            loc = "".join(f"/{p}" for p in err["loc"])
            raise ParamError(f"{st.sdef.type}: {err['msg']}", loc) from None
