"""The writer: every change of a scheduling tick in one batch, committed as one transaction.

Transitions are recorded here (:meth:`Writer.set` checks them against the state machine) and made
durable by :meth:`Writer.commit`, fenced by the instance's lease generation: a stale owner's commit
is refused by storage, and a refused or failed commit ends the run at once (nothing may go on
without durable writes). After each commit the observers see its events, the waiters for
durability wake, and ended attempts that keep something are released (DESIGN §5, durability first).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import trio

from .model import Batch, Event, LogChunk
from .states import STEP_TRANSITIONS, IllegalTransition, InstanceStatus, StepStatus, transition
from .storage import StorageError

__all__ = ["Writer", "crashpoint", "FLUSH_DELAY"]

I = InstanceStatus  # noqa: E741

# How long RUNNING states, handles and log lines may wait for a commit of their own (seconds).
FLUSH_DELAY = 0.05

# The empty map the ended attempts of a run share for their params and outputs, once their end is
# durable (most steps of a long run have neither): what a finished step keeps in memory is then
# its record alone. Never changed: an ended attempt's values are not written again.
EMPTY: dict = {}


def _parse_crash_at(spec: str | None) -> list | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return [name, int(count or 1)]


# Named crash points for the crash-test battery: LEGATO_CRASH_AT=name[:n] kills this process with
# SIGKILL the n-th time the kernel passes `name` (committed, before_launch, step_done, backoff,
# before_release, iteration_done). Unset (always, outside tests) it costs one comparison.
_CRASH_AT = _parse_crash_at(os.environ.get("LEGATO_CRASH_AT"))


def crashpoint(name: str) -> None:
    if _CRASH_AT is not None and _CRASH_AT[0] == name:
        _CRASH_AT[1] -= 1
        if _CRASH_AT[1] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


_TERMINAL = frozenset(s for s in StepStatus if s.terminal)


def _slim(st) -> None:
    """``st``'s attempt ended and that is durable: its empty params and outputs become the shared
    EMPTY, so that a long run's finished steps do not each keep two empty dicts (what a finished
    step still keeps is its record and timestamps: RSS grows ~220 B per step, not yet flat)."""
    record = st.record
    if record is None or record.status not in _TERMINAL:  # a retry's new attempt meanwhile
        return
    if not record.outputs and record.outputs is not EMPTY:
        record.outputs = EMPTY
    if st.params is not None and not st.params and st.params is not EMPTY and record.params is st.params:
        st.params = record.params = EMPTY


class Writer:
    """The instance run's writes (a mixin of :class:`legato.instance.InstanceRun`)."""

    def _init_writer(self) -> None:
        self.batch = Batch(self.iid)
        self.generation = 0
        self.flush_at: float | None = None  # trio time by which pending changes are committed
        self.durable_waiters: list[trio.Event] = []
        self.releases: list[tuple[Any, int, Any]] = []  # ended attempts to release once durable
        self.ended: list = []  # steps whose attempt ended in this batch: slimmed once it is durable
        self.lost: BaseException | None = None
        self._emit = self.engine.plugins.emit if self.engine.observed else None

    def flush_soon(self) -> None:
        """Commit what is pending within FLUSH_DELAY even if nothing else wakes the loop: RUNNING
        states, handles and log lines stream to storage without a commit each."""
        if self.flush_at is None:
            self.flush_at = trio.current_time() + FLUSH_DELAY
            self.wake.set()  # the loop may be waiting with no deadline: let it take this one

    def event(self, step_id: str | None, attempt: int, status: str, message: str = "") -> None:
        if self.secrets is not None:
            message = self.secrets.mask(message)
        self.batch.events.append(Event(time.time(), self.iid, step_id, attempt, status, message))

    def set(self, st, status: StepStatus, message: str = "") -> None:
        """Move ``st``'s current attempt to ``status`` (checked), with its event."""
        record = st.record
        if status not in STEP_TRANSITIONS[record.status]:
            raise IllegalTransition(record.status, status, f"step {st.key} attempt {st.attempt}")
        if self.secrets is not None:
            message = self.secrets.mask(message)
        record.status = status
        if message:
            record.message = message
        self.batch.attempts[(st.key, st.attempt)] = record
        self.batch.events.append(Event(time.time(), self.iid, st.key, st.attempt, status.value, message))
        if status in _TERMINAL:
            self.ended.append(st)

    def set_instance(self, status: InstanceStatus, message: str = "") -> None:
        self.instance.status = transition(self.instance.status, status, f"instance {self.iid}")
        now = time.time()
        if status is I.IN_PROGRESS:
            self.instance.started_at = now
        elif status.terminal:
            self.instance.ended_at = now
            if self.secrets is not None:
                message = self.secrets.mask(message)
            self.instance.message = message
        self.batch.instance = self.instance
        self.event(None, 0, status.value, message)

    def log_chunk(self, step_id: str, attempt: int, stream: str, text: str) -> None:
        self.batch.logs.append(LogChunk(self.iid, step_id, attempt, stream, text, time.time()))
        self.flush_soon()

    async def commit(self) -> None:
        self.flush_at = None
        batch, self.batch = self.batch, Batch(self.iid, self.generation)
        releases = self.releases  # the ends in this batch: released only once it is durable
        if releases:
            self.releases = []
        ended = self.ended
        if ended:
            self.ended = []
        try:
            await self.engine.storage.commit(batch)
        except StorageError as exc:
            # Without durable writes nothing may go on: drop everything (running steps are
            # cancelled and their processes killed); whoever resumes the instance takes over.
            self.lost = exc
            self.nursery.cancel_scope.cancel()
            await trio.lowlevel.checkpoint()
            raise
        crashpoint("committed")
        for st in ended:
            _slim(st)
        observer, emit = self.observer, self._emit
        if observer is not None or emit is not None:
            for event in batch.events:
                if observer is not None:
                    observer(event)
                if emit is not None:
                    emit(event)
        if self.durable_waiters:
            waiters, self.durable_waiters = self.durable_waiters, []
            for waiter in waiters:
                waiter.set()
        if releases:
            crashpoint("before_release")
            for st, attempt, handle in releases:
                self.nursery.start_soon(self.release_attempt, st, attempt, handle)
