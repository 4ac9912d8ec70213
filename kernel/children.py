"""Child instances: a step that starts another stored workflow and follows it to its end.

What :attr:`legato.steptype.StepContext.workflows` gives a step (the ``subworkflow`` step type
is its user). Modelled on Maestro's ``StepHelper.createInternalWorkflowRunRequest`` (the
ancestors chain, the depth limit, a deduplicating request id from the parent's identity) and
``SubworkflowStepRuntime`` (start once, then track the child's status):

- the child is pinned to the version resolved when the step runs and carries its ancestors
  (:attr:`legato.model.InstanceRecord.ancestors`): ``legato status CHILD`` names its parent;
- its request id and instance id derive from (parent instance, run, step, attempt), so an
  attempt starts at most one child whatever crashes and resumes come between;
- following it runs it in this process when no live worker does (a fresh child, or one whose
  worker died with the parent's), else waits for its end in the store; cancelling the follower
  (the parent step stopped or timed out) stops the child first, but a parent run that lost its
  lease leaves the child to run on (whoever resumes the parent follows that child).
"""

from __future__ import annotations

import hashlib
from typing import Any

import trio

from .model import InstanceRecord

__all__ = ["ChildWorkflows", "ChildRefused", "DEPTH_LIMIT"]

#: Maestro's Constants.WORKFLOW_DEPTH_LIMIT: an instance may have at most DEPTH_LIMIT - 1
#: ancestors (a root and nine levels of subworkflows below it).
DEPTH_LIMIT = 10

#: Seconds between reads of the store while another worker runs the child.
POLL_EVERY = 0.2

#: Store errors in a row that starting or following a child retries in place (backing off up to
#: 5 s, about a minute in all) before the step fails as a platform error.
STORE_RETRIES = 15


class ChildRefused(Exception):
    """The child cannot be started (unknown workflow or version, depth limit, recursion, a
    definition or a param the child refuses); the message says why. Retrying cannot help."""


class ChildWorkflows:
    """Children of one step attempt. Get it once per attempt from ``ctx.workflows``."""

    def __init__(self, engine, ctx) -> None:
        self.engine = engine
        self.ctx = ctx
        self._fresh: dict[str, Any] = {}  # child id -> its Definition, for a child started here

    # -- identity -----------------------------------------------------------------------------

    def _parent_run(self):
        run = self.engine.runs.get(self.ctx.instance_id)
        if run is None:  # pragma: no cover - a step runs inside its instance's run
            raise RuntimeError(f"instance {self.ctx.instance_id} is not running in this engine")
        return run

    @property
    def request_id(self) -> str:
        """The child's request id: one per (parent instance, run, step, attempt)."""
        parent = self._parent_run().instance
        return f"subworkflow:{parent.instance_id}:{parent.run_id}:{self.ctx.step_id}:{self.ctx.attempt}"

    @property
    def child_id(self) -> str:
        """The child's instance id, known before it exists (a step records it as its handle
        first, so a resumed parent finds the child rather than starting another)."""
        return hashlib.sha256(self.request_id.encode()).hexdigest()[:16]

    def parent_params(self) -> dict[str, Any]:
        """The parent instance's evaluated workflow params, as stored (secret references
        unresolved: a child never receives a resolved secret as a plain value)."""
        return dict(self._parent_run().instance.params)

    def step_params(self) -> dict[str, Any]:
        """This step's evaluated params, as stored (secret references unresolved)."""
        st = self._parent_run().steps.get(self.ctx.step_id)
        stored = getattr(st, "params", None)
        return dict(stored if stored is not None else self.ctx.params)

    # -- starting -------------------------------------------------------------------------------

    async def start(self, workflow_id: str, version: str | int | None = "active",
                    params: dict[str, Any] | None = None, *, queued: bool = False) -> InstanceRecord:
        """Start ``workflow_id`` at ``version`` (active, latest or a number) as this attempt's
        child with ``params``; the child this attempt already started comes back instead.
        ``queued``: created without a lease, for ``legato resume`` or a worker to run (an async
        subworkflow); otherwise this engine runs it when :meth:`follow` is called.
        Raises :class:`ChildRefused`. Store errors are retried in place (STORE_RETRIES in a row
        at most): the start may have been written before its answer was lost, and a new
        attempt would start a second child."""
        from .storage import StorageError

        failures = 0
        while True:
            try:
                return await self._start(workflow_id, version, params, queued)
            except StorageError as exc:
                failures += 1
                if failures > STORE_RETRIES:
                    raise
                self._retrying(f"starting {workflow_id!r}", exc)
            await trio.sleep(_backoff(failures))

    def _retrying(self, what: str, exc: Exception) -> None:
        self.ctx.log("stderr", f"[legato] {what}: {exc}; retrying\n")

    async def _start(self, workflow_id: str, version: str | int | None, params: dict[str, Any] | None,
                     queued: bool) -> InstanceRecord:
        from .definition import DefinitionError
        from .engine import StartError
        from .storage import VersionNotFound

        storage = self.engine.storage
        existing = await storage.get_instance(self.child_id)
        if existing is not None:
            return existing
        parent = self._parent_run().instance
        ancestors = [*parent.ancestors, {
            "workflow_id": parent.workflow_id, "instance_id": parent.instance_id, "run_id": parent.run_id,
            "step_id": self.ctx.step_id, "attempt": self.ctx.attempt,
        }]
        chain = [a["workflow_id"] for a in ancestors]
        if workflow_id in chain:
            raise ChildRefused(f"workflow {workflow_id!r} is already among this instance's ancestors "
                               f"({' -> '.join([*chain, workflow_id])}): a workflow may not start itself "
                               "as a subworkflow, directly or through others")
        if len(ancestors) >= DEPTH_LIMIT:
            raise ChildRefused(f"starting {workflow_id!r} here would nest subworkflows {len(ancestors)} levels "
                               f"deep ({' -> '.join([*chain, workflow_id])}); the depth limit is "
                               f"{DEPTH_LIMIT - 1} levels below the root workflow (Maestro's WORKFLOW_DEPTH_LIMIT)")
        try:
            stored = await storage.require_definition(workflow_id, version)
        except VersionNotFound as exc:
            raise ChildRefused(str(exc)) from None
        try:
            definition = self.engine.load(stored.document)
        except DefinitionError as exc:
            problems = "; ".join(str(p) for p in exc.problems[:3])
            raise ChildRefused(f"{workflow_id} v{stored.version} no longer loads here: {problems}") from None
        definition.version = stored.version
        try:
            child, created = await self.engine.start(
                definition, params, request_id=self.request_id, initiator="subworkflow", instance_id=self.child_id,
                ancestors=ancestors, queued=queued)
        except StartError as exc:
            raise ChildRefused(f"cannot start {workflow_id} v{stored.version}: {exc}") from None
        if created and not queued:
            self._fresh[child.instance_id] = definition
        return child

    # -- a restarted parent: the child of its earlier run -------------------------------------

    async def earlier_child(self) -> InstanceRecord | None:
        """In a restarted parent (a later run), the child this step started in an earlier run
        (the latest one), or None: Maestro restarts that child rather than start another
        (SubworkflowStepRuntime.runSubworkflowInstance, restartDirectly)."""
        parent = self._parent_run().instance
        if parent.run_id <= 1:
            return None
        storage = self.engine.storage
        found = None
        for a in await storage.get_attempts(parent.instance_id):
            if a.step_id == self.ctx.step_id and a.run_id < parent.run_id and a.attempt < self.ctx.attempt \
                    and isinstance(a.outputs, dict) and a.outputs.get("subworkflow_instance_id"):
                if found is None or a.attempt > found.attempt:
                    found = a
        if found is None:
            return None
        return await storage.get_instance(str(found.outputs["subworkflow_instance_id"]))

    async def restart(self, instance_id: str) -> InstanceRecord:
        """Restart the ended child ``instance_id`` from its incomplete steps, here, and return
        its final record (as :meth:`follow` does; a stop of the parent step stops it)."""
        record = await self.engine.storage.get_instance(instance_id)
        if record is None:
            raise ChildRefused(f"the child instance {instance_id} is not in the store")
        return await self._run_here(record, restart=True)

    # -- following ------------------------------------------------------------------------------

    async def follow(self, instance_id: str) -> InstanceRecord:
        """The child's final record, once it has ended: run here when no live worker runs it
        (this engine started it, or its worker died), else read from the store as it ends.
        Store errors (reading the child, the child's own run losing its store) are retried in
        place, STORE_RETRIES in a row at most, so that the step keeps its one child.
        Cancelled (the parent step stopped or timed out), it stops a child running here and
        waits for it to end STOPPED before the cancellation goes on; cancelled because the
        parent's run lost its lease or its store, it leaves the child running to its end."""
        from .engine import LeaseHeld
        from .storage import StorageError

        storage = self.engine.storage
        failures = 0
        while True:
            try:
                record = await storage.get_instance(instance_id)
                if record is None:
                    raise ChildRefused(f"the child instance {instance_id} is not in the store")
                if record.status.terminal:
                    return record
                if instance_id not in self.engine.runs and (not record.queued or await self._take_turn(record)):
                    try:
                        return await self._run_here(record)
                    except LeaseHeld:
                        pass  # another live worker runs it: its end shows in the store
                failures = 0
            except StorageError as exc:
                # Retried in place, with the same child (Maestro's MaestroRetryableError: CONTINUE):
                # failing the attempt would have its retry start a second child beside this one.
                failures += 1
                if failures > STORE_RETRIES:
                    raise
                self._retrying(f"following the child instance {instance_id}", exc)
            await trio.sleep(_backoff(failures))

    async def _take_turn(self, record: InstanceRecord) -> bool:
        """A queued child: take it now if its run strategy lets it start (else it is looked at
        again at the next poll), so that it never waits for its turn inside the shielded run."""
        engine = self.engine
        if await engine.storage.acquire_lease(record.instance_id, engine.owner, engine.lease_ttl) is None:
            return False
        engine.fresh_leases[record.instance_id] = trio.current_time()
        return True

    async def _run_here(self, record: InstanceRecord, restart: bool = False) -> InstanceRecord:
        engine, iid = self.engine, record.instance_id
        definition = self._fresh.pop(iid, None)
        outcome: dict[str, Any] = {}
        ended = trio.Event()

        async def runner(task_status) -> None:
            told = False

            class Status:
                def started(self, value=None) -> None:
                    nonlocal told
                    told = True
                    task_status.started(value)

            # Shielded: the child ends by being stopped (below), not by being torn down.
            with trio.CancelScope(shield=True):
                try:
                    if restart:
                        outcome["final"] = await engine.restart(iid, task_status=Status())
                    elif definition is not None:
                        outcome["final"] = await engine.run(definition, record, task_status=Status())
                    else:
                        outcome["final"] = await engine.resume(iid, task_status=Status())
                except Exception as exc:  # noqa: BLE001 - handed to the follower below
                    outcome["error"] = exc
                finally:
                    ended.set()
            if not told:
                task_status.started(None)

        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(runner)
                await ended.wait()
            except trio.Cancelled:
                run = engine.runs.get(iid)
                # The parent step stopped or timed out: stop the child. The parent's run lost its
                # lease or its store instead: the child is not its to end (it holds its own lease);
                # it runs on to its end here, and whoever resumes the parent follows it.
                if run is not None and self._parent_run().lost is None:
                    parent = self.ctx
                    run.stop(f"stopped with its parent step {parent.step_id} of instance {parent.instance_id}")
                raise
        if "error" in outcome:
            from .definition import DefinitionError
            from .engine import StartError

            error = outcome["error"]
            if isinstance(error, DefinitionError):  # its stored version no longer loads here
                problems = "; ".join(str(p) for p in error.problems[:3])
                raise ChildRefused(f"the child instance {iid} cannot be resumed here: {problems}") from None
            if isinstance(error, StartError):
                raise ChildRefused(f"the child instance {iid} cannot be resumed: {error}") from None
            raise error
        return outcome["final"]


def _backoff(failures: int) -> float:
    """Seconds before the next read of the store: POLL_EVERY, doubled per store error in a row
    up to 5 s."""
    return POLL_EVERY * min(2 ** failures, 25)
