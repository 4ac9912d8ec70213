"""Permits shared across instances (DESIGN §3): ``step_concurrency`` caps the steps running in
all instances of a workflow together, ``instance_step_concurrency`` the leaf steps of one instance
tree (a root and the subworkflows below it: a subworkflow's steps count toward its root's), and a
tag permit the steps carrying a tag, whichever workflows they belong to.

Modelled on Maestro: ``WorkflowSummary.deriveRuntimeTagPermits`` turns the two concurrencies into
permits keyed by the workflow id and by the root instance (its correlation id), for every step
and for leaf steps (not a subworkflow step, which waits for its child) respectively;
``MaestroTagPermitManager`` / ``MaestroTagPermitTask`` keep what each step holds in the store and
let waiting steps in as permits free, a tag's limit set through the API
(``TagPermitController``, here ``legato permits set``) winning over the step's own tag permit.

Held permits live in the store, taken atomically (:meth:`legato.storage.Storage.acquire_permits`:
count the live holders, insert, one transaction) and given back in the commit that ends the
attempt (:attr:`legato.model.Batch.permits_released`). A holder whose instance's lease is not live
holds nothing, and a resumed run frees what its crashed owner held (:func:`open_permits`): nothing
is leaked for good. A waiting step stays WAITING_FOR_PERMITS with the reason in its message; the
steps of a run ask again, oldest first, when the store says a permit was freed
(:meth:`legato.storage.Storage.wakeups`) or after :data:`POLL` seconds.

The instance's own cap (the smaller concurrency) is still counted in memory first
(:mod:`legato.stepstart`): a step asks the store only once its instance could run it, and a
workflow without either concurrency whose steps carry no tags never asks the store at all.
"""

from __future__ import annotations

from typing import Any

import trio

from .states import StepStatus
from .storage import StorageError

__all__ = ["Permits", "open_permits", "describe", "POLL", "SUBWORKFLOW"]

#: Seconds between asks of a step that waits when no wake-up comes (another machine freed it).
POLL = 0.5
#: The step type that starts a child instance: not a leaf step, so it takes no tree permit.
SUBWORKFLOW = "subworkflow"

_KEEP = (StepStatus.RUNNING, StepStatus.FINISHING)


def describe(key: str, held: int, limit: int) -> str:
    """Why a step waits, for ``legato status``: which permit, how many are held of how many."""
    kind, _, name = key.partition(":")
    if kind == "tag":
        return f"waiting for a permit of tag {name}: {held}/{limit} held"
    if kind == "workflow":
        return f"waiting for a permit: step_concurrency {limit} of workflow {name}: {held} held"
    return f"waiting for a permit: instance_step_concurrency {limit} of instance tree {name}: {held} held"


async def open_permits(run, attempts: list) -> "Permits | None":
    """The run's shared permits, or None when its steps need none (no store call then). A
    resumed or restarted run first frees what its attempts held, but for attempts that were
    running and may be reattached (they go on holding theirs)."""
    definition, instance = run.definition, run.instance
    shared = definition.shared_step_concurrency
    tree = None
    if instance.ancestors:  # a subworkflow: its root's instance_step_concurrency caps it with the tree
        root = instance.ancestors[0]["instance_id"]
        limit = await _root_limit(run.engine.storage, root)
        if limit is not None:
            tree = (f"tree:{root}", limit)
    elif definition.instance_step_concurrency is not None and any(
            s.type == SUBWORKFLOW for s in definition.all_by_id.values()):
        tree = (f"tree:{run.iid}", definition.instance_step_concurrency)
    if shared is None and tree is None and not definition.tagged:
        return None
    permits = Permits(run, None if shared is None else (f"workflow:{definition.workflow_id}", shared), tree)
    if attempts:
        keep = [(r.step_id, r.attempt) for r in attempts if r.status in _KEEP and r.handle is not None]
        await run.engine.storage.release_permits(run.iid, keep)
        permits.held.update(keep)
    return permits


async def _root_limit(storage, root_id: str) -> int | None:
    root = await storage.get_instance(root_id)
    if root is None:
        return None
    version = await storage.get_definition(root.workflow_id, root.version)
    workflow = version.document.get("workflow") if version is not None else None
    limit = workflow.get("instance_step_concurrency") if isinstance(workflow, dict) else None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1 else None


class Permits:
    """One run's shared permits: what each step needs, the attempts waiting for the store (oldest
    first), those holding, and the task that asks."""

    def __init__(self, run, shared: tuple[str, int] | None, tree: tuple[str, int] | None) -> None:
        self.run = run
        self.shared = shared
        self.tree = tree
        self.needs: dict[int, list[tuple[str, int | None]]] = {}  # by id() of the step definition
        self.queue: dict[tuple[str, int], Any] = {}  # (step key, attempt) -> step, in arrival order
        self.granted: set[tuple[str, int]] = set()  # told to the run, not yet handled by it
        self.held: set[tuple[str, int]] = set()
        self.asking = False
        self.napping: trio.CancelScope | None = None  # the asking task's wait for a wake-up

    def wants(self, sdef) -> list[tuple[str, int | None]]:
        """The permits a step takes: ``[(key, limit), …]`` (a tag's limit may be None: the store
        may hold one set with ``legato permits set``)."""
        found = self.needs.get(id(sdef))
        if found is None:
            found = []
            if self.shared is not None:
                found.append(self.shared)
            if self.tree is not None and sdef.type != SUBWORKFLOW:
                found.append(self.tree)
            permits = sdef.permits or {}
            for tag in dict.fromkeys(sdef.tags):
                found.append((f"tag:{tag}", permits.get(tag)))
            self.needs[id(sdef)] = found
        return found

    def wait(self, st) -> bool:
        """Queue ``st``'s attempt for the store; False when it needs no shared permit."""
        if st.sdef.loop is not None or not self.wants(st.sdef):
            return False
        self.queue[(st.key, st.attempt)] = st
        if not self.asking:
            self.asking = True
            self.run.nursery.start_soon(self._ask)
        elif self.napping is not None:
            self.napping.cancel()  # ask for it now: it may want a key others do not
        return True

    def release(self, key: tuple[str, int]) -> None:
        """``key``'s attempt ended: its permits go back in the run's next commit."""
        if key in self.held:
            self.held.discard(key)
            self.run.batch.permits_released.append(key)

    async def _ask(self) -> None:
        run = self.run
        storage = run.engine.storage
        try:
            with storage.wakeups().listen() as listener:
                while True:
                    asking = [(k, st) for k, st in self.queue.items() if k not in self.granted]
                    if not asking:
                        return
                    requests = [((run.iid, k[0], k[1]), self.wants(st.sdef)) for k, st in asking]
                    try:
                        answers = await storage.acquire_permits(requests)
                    except StorageError as exc:  # busy, or keeps no permits: say so, ask again later
                        answers = [f"waiting for a permit: the store could not give one ({exc})"] * len(asking)
                    for (k, st), answer in zip(asking, answers):
                        if answer is None:
                            self.granted.add(k)
                            run.post(("permit", st, k[1]))
                        elif self.queue.get(k) is st:
                            message = answer if isinstance(answer, str) else describe(*answer)
                            if st.record.message != message:
                                st.record.message = message
                                run.batch.attempts[k] = st.record
                                run.flush_soon()
                    if all(a is None for a in answers):
                        continue  # all in: anything queued meanwhile asks at once
                    with trio.CancelScope() as self.napping:
                        await listener.wait(POLL)
                    self.napping = None
        finally:
            self.asking = False
            self.napping = None

    def stop(self, inside) -> list:
        """Take the waiting attempts of the steps ``inside`` accepts out of the queue; return their steps."""
        gone = [k for k, st in self.queue.items() if inside(st)]
        return [self.queue.pop(k) for k in gone]
