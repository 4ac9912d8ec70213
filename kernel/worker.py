"""The worker: a long-running process that runs the store's queued and abandoned instances
(DESIGN §5 ownership, §8 ``legato worker``).

A :class:`Worker` claims startable instances (:meth:`Storage.claim_resumable
<legato.storage.Storage.claim_resumable>`: queued ones their run strategy lets start, in their
order (:mod:`legato.strategy`, decided as the leases are taken), and those whose owner died or
whose lease expired) and runs each in a task of its own, at most ``max_instances`` at once, through the
engine it is given (:meth:`Engine.run <legato.engine.Engine.run>`: the run renews its lease and
resumes where the store says it was). Work is found when the store wakes the worker
(:mod:`legato.wakeup`: ``legato start --no-wait`` commits, then pokes) or, as a fallback, every
``poll`` seconds.

Claiming is the lease: the store takes it and reads the instance in one transaction, so an
instance another worker ran to its end meanwhile is seen ended and left alone; two workers never
run one instance (fencing refuses a stale owner's writes besides).

:meth:`Worker.stop` is the graceful shutdown: no more claims; every run is handed back
(:meth:`InstanceRun.hand_back <legato.ownership.Ownership.hand_back>`: no new step starts, the
running ones finish and are made durable, then the run ends unfinished with its lease released);
what is still running after ``grace`` seconds is cancelled, its leases released too. Either way
nothing is lost: the next worker (or ``legato resume``) carries the instances on.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

import trio

from .definition import DefinitionError
from .instance import StartError
from .model import InstanceRecord
from .storage import StorageError

__all__ = ["Worker", "POLL_EVERY", "GRACE"]

#: Seconds between looks at the store when nothing woke the worker (what finds instances whose
#: owner died: a dead worker tells nobody).
POLL_EVERY = 1.0
#: Seconds running steps get to finish after a shutdown is asked for.
GRACE = 30.0
#: Definitions kept loaded (by workflow and version: versions are immutable).
DEFINITIONS_KEPT = 256


class _Started:
    """The ``task_status`` an instance run reports to: records the run, hands it back at once if
    the worker began stopping while it started, then lets the claim loop go on."""

    __slots__ = ("worker", "iid", "done")

    def __init__(self, worker: "Worker", iid: str) -> None:
        self.worker, self.iid, self.done = worker, iid, False

    def started(self, run=None) -> None:
        self.done = True
        if run is not None and self.iid in self.worker.active:
            self.worker.active[self.iid] = run
            if self.worker.stopping:
                run.hand_back()


class Worker:
    """Runs the store's startable instances until :meth:`stop` (or, with ``once``, until none is
    left). ``log`` receives one line per thing worth saying (default: nothing)."""

    def __init__(self, engine, *, max_instances: int = 100, poll: float = POLL_EVERY, grace: float = GRACE,
                 once: bool = False, log: Callable[[str], None] | None = None) -> None:
        if max_instances < 1:
            raise ValueError("max_instances must be at least 1")
        self.engine = engine
        self.storage = engine.storage
        self.max_instances = max_instances
        self.poll = poll
        self.grace = grace
        self.once = once
        self.log = log or (lambda line: None)
        self.active: dict[str, Any] = {}  # instance id -> its InstanceRun (None while it starts)
        self.skipped: set[str] = set()  # instances this worker cannot run (their definition no longer loads)
        self.stopping = False
        self.counts = {"claimed": 0, "ended": 0, "handed_back": 0, "failed": 0}
        self._definitions: dict[tuple[str, int], Any] = {}
        self._wake = trio.Event()
        self._full = False
        self._instances: trio.Nursery | None = None

    def statistics(self) -> dict[str, int]:
        """Instances claimed, run to their end, handed back unfinished, and failed to run; and those running now."""
        return {**self.counts, "running": len(self.active)}

    # -- control ------------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Shut down gracefully: claim nothing more, hand every run back, cancel what still runs
        after ``grace`` seconds (default: the worker's). Asked again, cancels what runs now."""
        if self.stopping:
            self.kill()
            return
        self.stopping = True
        for run in list(self.active.values()):
            if run is not None:
                run.hand_back()
        if self._instances is not None:
            scope = self._instances.cancel_scope
            scope.deadline = min(scope.deadline, trio.current_time() + (self.grace if grace is None else grace))
        self._wake.set()

    def kill(self) -> None:
        """Cancel every run now (their leases are released; the interrupted attempts are
        reattached or retried by whoever resumes them)."""
        self.stopping = True
        if self._instances is not None:
            self._instances.cancel_scope.cancel()
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Claim and run instances until stopped (or drained, with ``once``); returns once every
        run has ended or been handed back."""
        from .actions import ActionApplier

        wakeups = self.storage.wakeups()
        with wakeups.listen() as listener:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._forward, listener)
                await outer.start(ActionApplier(self.engine).run)  # stop, kill, skip… asked of its runs
                async with trio.open_nursery() as instances:
                    self._instances = instances
                    task_status.started(self)
                    woken = "woken when work is queued" if wakeups.notifies else "no wake-ups from this store"
                    self.log(f"{self.engine.owner} runs up to {self.max_instances} instance(s) at once from "
                             f"{self.storage.url} ({woken}, looking every {self.poll:g}s)"
                             f"{'; exits once drained' if self.once else ''}")
                    await self._claim_loop()
                outer.cancel_scope.cancel()
        if self.counts["handed_back"]:
            wakeups.notify()  # other workers take them over now, not at their next poll

    async def _forward(self, listener) -> None:
        while True:
            if await listener.wait(3600.0):
                self._wake.set()

    async def _claim_loop(self) -> None:
        while not self.stopping:
            self._wake = trio.Event()
            claimed, more = await self._claim()
            if self.stopping:
                return
            if self.once and not self.active and not claimed:
                return  # drained: nothing to claim, nothing running
            if claimed and more:
                continue  # the list was cut at what we could take: look again now
            with trio.move_on_after(self.poll):
                await self._wake.wait()

    async def _claim(self) -> tuple[int, bool]:
        """Claim up to the free slots; returns (claimed, whether more may be waiting)."""
        free = self.max_instances - len(self.active)
        self._full = free <= 0
        if self._full:
            return 0, True
        engine = self.engine
        try:
            # One call for them all: leases taken and each record read as it was then (whoever
            # ran an instance before cannot change it any more), queued instances' turns decided
            # per workflow (legato.strategy).
            taken = await self.storage.claim_resumable(engine.owner, engine.lease_ttl, free,
                                                       skip=self.skipped | self.active.keys())
        except StorageError as exc:
            self.log(f"cannot claim instances: {exc}")
            return 0, False
        claimed = 0
        for record, generation in taken:
            try:
                if await self._claim_one(record, generation):
                    claimed += 1
            except StorageError as exc:
                self.log(f"cannot claim instance {record.instance_id}: {exc}")
        self._full = len(self.active) >= self.max_instances
        return claimed, len(taken) >= free

    async def _claim_one(self, record: InstanceRecord, generation: int) -> bool:
        """Run ``record``, whose lease is ours at ``generation``, unless it has ended meanwhile or its
        definition does not load here (its lease is then given back)."""
        iid, engine = record.instance_id, self.engine
        if self.stopping or record.status.terminal:
            await self._release(iid)
            return False
        try:
            definition = await self._definition(record)
        except (DefinitionError, StorageError) as exc:
            self.skipped.add(iid)
            await self._release(iid)
            why = "; ".join(str(p) for p in exc.problems[:3]) if isinstance(exc, DefinitionError) else str(exc)
            self.log(f"instance {iid} not run: its definition {record.workflow_id} v{record.version} does not "
                     f"load here ({why})")
            return False
        except BaseException:  # cancelled (the worker stops): not ours to keep
            await self._release(iid)
            raise
        if generation == 1:
            engine.fresh_leases[iid] = trio.current_time()  # no need to take it again in the run
        self.active[iid] = None
        self.counts["claimed"] += 1
        self._instances.start_soon(self._drive, definition, record)
        return True

    async def _release(self, iid: str) -> None:
        """Give the lease of ``iid`` up, even while being cancelled (bounded; best effort: it expires)."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5.0):
                try:
                    await self.storage.release_lease(iid, self.engine.owner)
                except StorageError:
                    pass

    async def _definition(self, record: InstanceRecord):
        key = (record.workflow_id, record.version)
        found = self._definitions.get(key)
        if found is None:
            version = await self.storage.get_definition(record.workflow_id, record.version)
            if version is None:
                raise StorageError(f"definition {record.workflow_id} v{record.version} is missing from the store")
            found = self.engine.load(version.document)
            found.version = version.version
            if len(self._definitions) >= DEFINITIONS_KEPT:
                self._definitions.pop(next(iter(self._definitions)))
            self._definitions[key] = found
        return found

    async def _drive(self, definition, record: InstanceRecord) -> None:
        iid = record.instance_id
        status = _Started(self, iid)
        ended = failed = False
        try:
            final = await self.engine.run(definition, record, task_status=status)
            ended = True
        except StorageError as exc:  # a lost lease, a failed store
            failed = True
            self.counts["failed"] += 1
            self.log(f"instance {iid} left to the next worker: {exc}")
        except StartError as exc:  # e.g. a secret this worker cannot resolve: another worker may
            failed = True
            self.counts["failed"] += 1
            self.skipped.add(iid)
            self.log(f"instance {iid} not run here: {exc}")
        except Exception as exc:  # a bug in Legato or a plugin: say so, keep running the others
            failed = True
            self.counts["failed"] += 1
            self.skipped.add(iid)
            self.log(f"instance {iid} not run, internal error (a bug in Legato or a plugin): "
                     + "".join(traceback.format_exception(exc)).rstrip())
        else:
            if final.status.terminal:
                self.counts["ended"] += 1
                self.log(f"instance {iid} ({record.workflow_id} v{record.version}): {final.status.value}")
            else:
                self.counts["handed_back"] += 1
                self.log(f"instance {iid} ({record.workflow_id} v{record.version}): handed back unfinished")
        finally:
            self.active.pop(iid, None)
            if not ended:
                if not failed:  # cancelled: the grace ran out
                    self.counts["handed_back"] += 1
                    self.log(f"instance {iid} ({record.workflow_id} v{record.version}): cancelled after the "
                             "grace, handed back unfinished")
                # Cancelled (the grace ran out) or failed: give the lease up so the next worker need
                # not wait for it to expire. Its steps have stopped: their tasks ended with the run.
                await self._release(iid)
            if self._full or (self.once and not self.active):
                self._wake.set()  # a slot is free for what we left waiting, or the drain may be over

