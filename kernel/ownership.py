"""Ownership of an instance: its lease, taken before the run and renewed by a heartbeat (DESIGN §5).

The lease's generation fences every write (:mod:`legato.writer`): once another worker takes the
lease, this one's commits are refused. Losing the lease ends the run at once, losing nothing
committed; whoever holds it carries the instance on.
"""

from __future__ import annotations

import trio

from .storage import StaleWrite, StorageError

__all__ = ["Ownership", "LeaseHeld"]


class LeaseHeld(StorageError):
    """Another live worker owns the instance."""


class Ownership:
    """The lease of an instance run (a mixin of :class:`legato.instance.InstanceRun`)."""

    async def acquire(self) -> int:
        """Take the instance's lease and return the generation to write with; raise
        :class:`LeaseHeld` naming the holder while another live worker has it."""
        storage, engine = self.engine.storage, self.engine
        created_at = engine.fresh_leases.pop(self.iid, None)
        if created_at is not None and trio.current_time() - created_at < engine.lease_ttl / 3:
            self.renewed_at = created_at
            return 1  # start created it leased to us moments ago; the heartbeat renews it in time
        self.renewed_at = trio.current_time()
        generation = await storage.acquire_lease(self.iid, engine.owner, engine.lease_ttl)
        if generation is None:
            lease = await storage.get_lease(self.iid)
            who, left = (lease.describe(), f" (for {lease.expires_in:.1f}s more)") if lease else ("another worker", "")
            raise LeaseHeld(f"instance {self.iid} is owned by another live worker, {who}; it is resumed once "
                            f"that worker ends or its lease expires{left}")
        return generation

    async def heartbeat(self) -> None:
        """Renew the lease well before it expires. Late renewals (the worker was paused, the
        database locked) keep it as long as no other worker took it; storage errors are retried
        until one succeeds or says the lease is gone. Losing it to another worker ends the run."""
        storage, owner, ttl = self.engine.storage, self.engine.owner, self.engine.lease_ttl
        delay = ttl / 3
        while True:
            await trio.sleep(delay)
            renewed = trio.current_time()
            try:
                generation = await storage.acquire_lease(self.iid, owner, ttl, generation=self.generation)
            except StorageError:
                delay = min(ttl / 3, 1.0)  # try again soon: the lease is only lost if someone took it
                continue
            delay = ttl / 3
            if generation == self.generation:
                self.renewed_at = renewed
                continue
            await self._lose_lease()
            return

    async def confirm_lease(self) -> bool:
        """Before work starts outside the process (a step's launch): if the lease was last renewed
        longer ago than half its TTL (the process was paused, the machine suspended), renew it
        now; False if it is gone (the run is ending: another worker took the instance over and
        runs this attempt again, so this one must not start it). Free while the heartbeat keeps up."""
        engine = self.engine
        if trio.current_time() - self.renewed_at < engine.lease_ttl / 2:
            return True
        renewed = trio.current_time()
        try:
            generation = await engine.storage.acquire_lease(self.iid, engine.owner, engine.lease_ttl,
                                                            generation=self.generation)
        except StorageError:
            return True  # cannot tell: fencing still refuses this run's writes if it was taken
        if generation == self.generation:
            self.renewed_at = renewed
            return True
        await self._lose_lease()
        return False

    async def _lose_lease(self) -> None:
        storage, owner = self.engine.storage, self.engine.owner
        try:
            lease = await storage.get_lease(self.iid)
        except StorageError:
            lease = None
        who = lease.describe() if lease is not None else "another worker"
        self.lost = StaleWrite(f"lost the lease of instance {self.iid} to {who} while this worker "
                               f"({owner}) was not renewing it; that worker carries the instance on")
        self.nursery.cancel_scope.cancel()

    def hand_back(self) -> None:
        """Give the instance back to the store unfinished, for the next worker to resume (a
        worker shutting down): no step starts from now on (new attempts wait for a permit, durably
        WAITING_FOR_PERMITS); once the running ones have ended and their ends are durable, the
        run returns its record, not ended, with the lease released. Nothing is marked STOPPED
        and no attempt is cut short: a worker that cannot wait that long cancels the run instead
        (the interrupted attempts are then reattached or retried by whoever resumes it). Call it
        on a running run (the one ``nursery.start(engine.run, …)`` hands back)."""
        self.limit = 0
        if self.nursery is not None and not getattr(self, "handing_back", False):
            self.handing_back = True
            try:
                self.nursery.start_soon(self._hand_back)
            except RuntimeError:  # its nursery has closed: the run is ending already, nothing to hand back
                pass

    async def _hand_back(self) -> None:
        while self.running or self.batch:  # a step runs, or an end is not durable yet
            waiter = trio.Event()
            self.durable_waiters.append(waiter)
            self.post(("flush",))  # commit what is pending now rather than at its deadline
            await waiter.wait()
        # Ends the run as a lost lease does, minus the loss: _run releases the lease and returns.
        self.nursery.cancel_scope.cancel()

    async def release_lease(self) -> None:
        try:
            await self.engine.storage.release_lease(self.iid, self.engine.owner)
        except StorageError:
            pass  # the instance is over; an unreleased lease just expires
