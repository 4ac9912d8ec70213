"""Steps and signals in an instance run (DESIGN §3 signals, §4 WAITING_FOR_SIGNALS).

- A step with ``signal_dependencies`` stops in WAITING_FOR_SIGNALS when it is created: its
  dependencies' names and match values are evaluated then (CEL and ``${}`` over the params and the
  steps upstream), its message says what it waits for, and :class:`SignalWaits` looks in the store
  for the latest signal that matches each (:meth:`Storage.match_signal
  <legato.storage.Storage.match_signal>`). It looks again when the store says something was
  committed (:meth:`Storage.wakeups <legato.storage.Storage.wakeups>`: a send, a step's signal
  outputs, from any process on the machine), or every :data:`POLL` seconds when nothing says so
  (a send on another machine). Once each dependency has its signal, the step goes on
  (EVALUATING_PARAMS) and its params see the signals' params as ``signal.<name>.<param>``. A
  ``bypass`` action (Maestro's BYPASS_STEP_DEPENDENCIES) lets it go on without them.
- The wait survives a crash: WAITING_FOR_SIGNALS is durable, and a resumed run waits again
  (:meth:`legato.recovery.Recovery._continue`); signals are never consumed by a step, so the
  match is found again.
- A step with ``signal_outputs`` announces them when it succeeds, in the same commit as its
  SUCCEEDED (:attr:`legato.model.Batch.signals`), each with a request id of the instance, run,
  step, attempt and position: a crash before that commit announces nothing (the step runs again),
  after it the step is not run again, so each is announced once.

Modelled on Maestro's SignalDependencies / StepDependencyMatchStatus (waiting step) and
SignalOutputs (announced signals) and on MaestroSignalHandler (matching the latest instance).
"""

from __future__ import annotations

from typing import Any

import trio

from .cel import to_cel
from .params import ParamError, evaluate_params, needs_cel
from .signals import SignalError, check_value, describe_match, satisfied
from .states import StepStatus
from .storage import StorageError

__all__ = ["SignalWaits", "StepSignals", "POLL"]

S = StepStatus

#: Seconds between looks at the store of a step that waits when no wake-up comes.
POLL = 1.0
#: Signals read per request while looking at those sent since the last look.
PAGE = 500


class SignalWaits:
    """One run's steps in WAITING_FOR_SIGNALS, what each waits for, and the task that looks."""

    def __init__(self, run) -> None:
        self.run = run
        self.waiting: dict[tuple[str, int], tuple[Any, list]] = {}  # (key, attempt) -> (step, wants)
        # (key, attempt, dependency) -> (the number of the last signal of its name looked at, the
        # latest that matched so far or None): signals are never changed, so a look reads only those
        # sent since (not the name's whole history).
        self.cursors: dict[tuple[str, int, int], tuple[int, Any]] = {}
        self.looking = False
        self.napping: trio.CancelScope | None = None

    def add(self, st, wants: list) -> None:
        self.waiting[(st.key, st.attempt)] = (st, wants)
        if not self.looking:
            self.looking = True
            self.run.nursery.start_soon(self._look)
        elif self.napping is not None:
            self.napping.cancel()  # look now: its signal may be there already

    def remove(self, st) -> bool:
        """Take ``st`` out of the wait (an action ends or bypasses it); False if it was not waiting."""
        return self._drop((st.key, st.attempt)) is not None

    def stop(self, inside) -> list:
        """Take the waiting steps ``inside`` accepts out of the wait; return them."""
        gone = [k for k, (st, _) in self.waiting.items() if inside(st)]
        return [self._drop(k)[0] for k in gone]

    def _drop(self, key: tuple[str, int]):
        found = self.waiting.pop(key, None)
        if found is not None:
            for index in range(len(found[1])):
                self.cursors.pop((*key, index), None)
        return found

    async def _latest(self, storage, key: tuple[str, int], index: int, name: str, match):
        """The latest signal of ``name`` that meets ``match``: the first look asks the store
        (:meth:`Storage.match_signal <legato.storage.Storage.match_signal>`), later ones read only
        the signals sent since the last look."""
        at = (*key, index)
        known = self.cursors.get(at)
        if known is None:
            latest = await storage.get_signal(name)  # before matching: one sent meanwhile is read next time
            found = await storage.match_signal(name, match)
            self.cursors[at] = (max(latest.seq if latest is not None else 0, found.seq if found else 0), found)
            return found
        cursor, found = known
        while True:
            page = await storage.list_signals(name, cursor, PAGE)
            for signal in page:
                cursor = signal.seq
                if satisfied(signal.params, match):
                    found = signal
            if len(page) < PAGE:
                break
        self.cursors[at] = (cursor, found)
        return found

    async def _look(self) -> None:
        run = self.run
        storage = run.engine.storage
        try:
            # Listening before the first look: a signal sent between the look and the wait wakes it.
            with storage.wakeups().listen() as listener:
                while self.waiting:
                    for key, (st, wants) in list(self.waiting.items()):
                        matched = []
                        try:
                            for index, (name, match) in enumerate(wants):
                                found = await self._latest(storage, key, index, name, match)
                                if found is None:
                                    break
                                matched.append(found)
                        except StorageError as exc:  # busy: say so on the step, look again later
                            if self.waiting.get(key, (None,))[0] is st:
                                run.note(st, f"{_waiting_for(wants)} (the store could not be read: {exc})")
                            continue
                        if self.waiting.get(key, (None,))[0] is not st:
                            continue  # stopped, bypassed or ended meanwhile
                        if len(matched) == len(wants):
                            self._drop(key)
                            run.post(("signals", st, key[1], matched))
                    if not self.waiting:
                        return
                    with trio.CancelScope() as self.napping:
                        await listener.wait(POLL)
                    self.napping = None
        finally:
            self.looking = False
            self.napping = None


def _waiting_for(wants: list) -> str:
    return "waiting for signals: " + ", ".join(describe_match(name, match) for name, match in wants)


class StepSignals:
    """Signal dependencies and outputs of steps (a mixin of :class:`legato.instance.InstanceRun`)."""

    def note(self, st, message: str) -> None:
        """Change the message of ``st``'s attempt, durably soon."""
        if st.record.message != message:
            st.record.message = message
            self.batch.attempts[(st.key, st.attempt)] = st.record
            self.flush_soon()

    def wait_for_signals(self, st) -> None:
        """``st`` is WAITING_FOR_SIGNALS: evaluate what it waits for and queue it (or end it
        INTERNALLY_FAILED, saying where, when that cannot be evaluated)."""
        try:
            wants = self._signal_wants(st)
        except ParamError as exc:
            self.end_step(st, S.INTERNALLY_FAILED, f"{exc.pointer}: {exc.message}")
            return
        message = _waiting_for(wants)
        st.record.message = message
        self.batch.attempts[(st.key, st.attempt)] = st.record
        last = self.batch.events[-1] if self.batch.events else None
        if last is not None and last.step_id == st.key and last.status == S.WAITING_FOR_SIGNALS.value:
            last.message = message  # the timeline (and `legato run`) say what it waits for
        if self.signal_waits is None:
            self.signal_waits = SignalWaits(self)
        self.signal_waits.add(st, wants)

    def _signal_wants(self, st) -> list:
        scope = st.scope
        out = []
        for dep in st.sdef.signal_dependencies:
            specs = [dep.name, *(spec for _, _, spec in dep.match)]
            context = scope.context() if needs_cel(specs) else None
            try:
                name = evaluate_params({"name": dep.name}, self.engine.compiler, scope=scope.params,
                                       context=context, budget=self.budget)["name"]
            except ParamError as exc:
                raise ParamError(exc.message, f"{dep.pointer}/name") from None
            match = []
            for pname, op, spec in dep.match:
                at = f"{dep.pointer}/match_params/{pname.replace('~', '~0').replace('/', '~1')}"
                try:
                    value = evaluate_params({pname: spec}, self.engine.compiler, scope=scope.params,
                                            context=context, budget=self.budget)[pname]
                    check_value(value, at)
                except ParamError as exc:
                    raise ParamError(exc.message, at) from None
                except SignalError as exc:
                    raise ParamError(exc.message + f" (evaluated to {value!r:.40})", at) from None
                match.append((pname, op, value))
            out.append((name, tuple(match)))
        return out

    def signals_matched(self, st, attempt: int, matched: list) -> None:
        """Each dependency of ``st`` has its signal (a message from :class:`SignalWaits`): go on."""
        if st.attempt != attempt or st.record is None or st.record.status is not S.WAITING_FOR_SIGNALS:
            return
        if self.ending is not None or st.scope.ending is not None:
            return  # being stopped: _stop ends it
        st.signals = {s.name: s.params for s in matched}
        self.set(st, S.EVALUATING_PARAMS, "signals matched: " + ", ".join(f"{s.name} #{s.seq}" for s in matched))
        self.prepare(st)

    def bypass_signals(self, st, who: str) -> bool:
        """The bypass action: ``st`` goes on without its signals; False when it is not waiting."""
        if self.signal_waits is None or not self.signal_waits.remove(st):
            return False
        st.signals = {}
        self.set(st, S.EVALUATING_PARAMS, f"signal dependencies bypassed by {who}")
        self.prepare(st)
        return True

    def cel_names(self, st) -> dict[str, Any]:
        """What ``st``'s param expressions see: its scope's names, and ``signal`` (the params of
        the signals it waited for, by name) when it waited for any."""
        context = st.scope.context()
        if st.signals is None:
            return context
        return {**context, "signal": to_cel(st.signals)}

    def output_signals(self, st) -> list | str:
        """``st``'s signal outputs evaluated (its params and outputs as bare names and as
        ``step.params`` / ``step.outputs``), as Batch.signals entries; or the located reason one
        could not be evaluated."""
        record = st.record
        own = {**(st.params or {}), **(record.outputs or {})}
        context = None
        out = []
        for index, sig in enumerate(st.sdef.signal_outputs):
            specs = [sig.name, *sig.params.values()]
            if context is None and needs_cel(specs):
                context = {**self.cel_names(st), **{k: to_cel(v) for k, v in own.items()},
                           "step": to_cel({"id": st.sdef.id, "params": st.params or {},
                                           "outputs": record.outputs or {}})}
            scope = {**st.scope.params, **own}
            try:
                name = evaluate_params({"name": sig.name}, self.engine.compiler, scope=scope, context=context,
                                       budget=self.budget)["name"]
            except ParamError as exc:
                return f"{sig.pointer}/name: {exc.message}"
            params = {}
            for pname, spec in sig.params.items():
                at = f"{sig.pointer}/params/{pname.replace('~', '~0').replace('/', '~1')}"
                try:
                    params[pname] = check_value(evaluate_params({pname: spec}, self.engine.compiler, scope=scope,
                                                                context=context, budget=self.budget)[pname], at)
                except ParamError as exc:
                    return f"{at}: {exc.message}"
                except SignalError as exc:
                    return f"{at}: {exc.message}"
            request_id = f"{self.iid}/{self.instance.run_id}/{st.key}/{st.attempt}/{index}"
            out.append((name, params, request_id))
        return out
