"""The engine: loads definitions, starts instances and runs them (DESIGN §3, §5).

One :class:`Engine` per process owns the plugins, the CEL compiler, the step-type instances and
the storage. :meth:`Engine.start` evaluates a start request's params and creates the instance
(pushing its definition's version, leased to this engine, in one transaction where it can);
:meth:`Engine.run` hands it to an :class:`~legato.instance.InstanceRun`, the task that drives it
to its end; :meth:`Engine.resume` does the same for an instance from storage.
"""

from __future__ import annotations

import gc
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import trio

from .cel import CelCompiler, to_cel
from .definition import Definition, load_definition, resolve_attributes
from .instance import InstanceRun, StartError
from .model import Event, InstanceRecord
from .ownership import LeaseHeld
from .params import ParamError, ValueBudget, evaluate_params, merge_start_params, needs_cel, resolve_secrets
from .plugin_manager import Plugins, get_plugins
from .states import InstanceStatus
from .steptype import RUNNING_ENGINE, StepType, validate_step_settings
from .storage import Storage, StorageError

__all__ = ["Engine", "InstanceRun", "StartError", "LeaseHeld", "RestartRefused"]


class RestartRefused(StorageError):
    """The instance cannot be restarted (it has not ended, or it succeeded); the message says why."""

class Engine:
    """Loads definitions and runs instances against one storage backend.

    One per process: it owns the plugins, the CEL compiler (and its cache), the step-type
    instances and the storage.  ``workspace`` is where instances get their working directories.
    ``step_settings`` (step type name -> the operator's settings for it) are validated here by
    each step type's ``Settings`` model: wrong ones raise ``legato.steptype.SettingsError``.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        plugins: Plugins | None = None,
        workspace: str | os.PathLike | None = None,
        step_settings: dict[str, dict[str, Any]] | None = None,
        lease_ttl: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self.plugins = plugins or get_plugins()
        self.storage = storage
        self.lease_ttl = lease_ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.workspace = Path(workspace or ".legato/runs").resolve()
        self.compiler = CelCompiler(self.plugins.cel_functions.functions)
        # The plugins that may observe events load now (third-party entry points), not in the first run.
        self.observed = self.plugins.has_event_observers
        # Checked now, so wrong settings fail here (SettingsError), not when a step first runs.
        self._step_settings = validate_step_settings(self.plugins.step_types.types, step_settings)
        self._step_types: dict[str, StepType] = {}
        self.releasing: set[str] = set()  # step types that override StepType.release
        self.runs: dict[str, InstanceRun] = {}
        self.empty_configs: dict[str, Any] = {}  # step type -> its Params validated from {} (read-only, shared)
        self.fresh_leases: dict[str, float] = {}  # instance id -> trio time start created it leased to us
        self.applier = None  # the legato.actions.ActionApplier handing actions to these runs, while one runs

    def step_type(self, name: str) -> StepType:
        """The (one, shared) instance of step type ``name``, built with its operator settings."""
        st = self._step_types.get(name)
        if st is None:
            st = self.plugins.step_types.types[name](self._step_settings.get(name))
            self._step_types[name] = st
            if type(st).release is not StepType.release:
                self.releasing.add(name)
        return st

    def load(self, source) -> Definition:
        """Load and validate a definition (path, text or document). Raises DefinitionError."""
        return load_definition(source, self.plugins.step_types.types, self.compiler, self.plugins.triggers.types)

    async def start(
        self,
        definition: Definition,
        params: dict[str, Any] | None = None,
        *,
        raw_params: dict[str, str] | None = None,
        request_id: str | None = None,
        initiator: str = "manual",
        instance_id: str | None = None,
        ancestors: list[dict[str, Any]] | None = None,
        queued: bool = False,
        run_ts: float | None = None,
    ) -> tuple[InstanceRecord, bool]:
        """Push the definition's version, evaluate the workflow params and create the instance.

        A definition read from the store (``definition.version`` set) is not pushed again: the
        instance is pinned to that version. ``instance_id`` (default: a random one) and
        ``ancestors`` serve a subworkflow step (:class:`legato.children.ChildWorkflows`).
        ``queued``: created without a lease (CREATED, no owner), for ``legato resume`` or a
        worker to run; otherwise it is leased to this engine, which is to run it next, unless
        the workflow's run strategy (:mod:`legato.strategy`) makes it wait: then it comes back
        ``queued`` (:func:`legato.strategy.wait_turn` waits for its turn), or STOPPED at once
        (FIRST_ONLY). A LAST_ONLY start asks the older running instances to stop. ``run_ts``: the
        time the run is for (epoch seconds; a trigger's scheduled time), ``workflow.run_ts`` in
        its expressions (default: now).

        ``params`` are values (or full-form definitions, as Maestro's run params) and ``raw_params``
        ``name=value`` strings from a command line, merged into the definition's params by
        :func:`legato.params.merge_start_params` (modes, deep-merged maps, added params). Returns (instance, created): with a known
        ``request_id`` the existing instance comes back and nothing new is created.
        """
        budget = ValueBudget()
        try:  # Maestro's ParamsMergeHelper: modes, deep-merged maps, params the request adds
            specs = merge_start_params(definition.params, params, raw_params, budget=budget)
        except ParamError as exc:
            raise StartError(exc.message, f"/workflow/params{exc.pointer}") from None
        now = time.time()
        instance_id = instance_id or uuid.uuid4().hex[:16]
        # Literal params need no CEL (a workflow without expressions never imports cel-python),
        # nor the version: then the definition is pushed and the instance created in one call.
        cel_needed = needs_cel(specs.values())
        version, context = definition.version, None
        if cel_needed:
            if version is None:
                version = (await self.storage.push_definition(definition.workflow_id, definition.document)).version
            context = {"workflow": to_cel({
                "id": definition.workflow_id, "version": version, "instance_id": instance_id,
                "run_id": 1, "run_ts": _utc(now if run_ts is None else run_ts), "initiator": initiator,
            })}
        try:
            values = evaluate_params(specs, self.compiler, context=context, budget=budget)
        except ParamError as exc:
            raise StartError(exc.message, f"/workflow/params{exc.pointer}") from None
        if definition.has_secrets:  # refuse now what the instance could not run with
            resolve_workflow_secrets(definition, values, self.compiler)
        try:  # `${param}` in timeouts and retry policies: refused now if it reads wrong
            resolve_attributes(definition, values)
        except ParamError as exc:
            raise StartError(exc.message, exc.pointer) from None
        record = InstanceRecord(
            instance_id=instance_id, workflow_id=definition.workflow_id, version=version or 0,
            params=values, request_id=request_id, initiator=initiator, created_at=now, ancestors=ancestors or [],
            run_strategy=definition.run_strategy.value, workflow_concurrency=definition.workflow_concurrency,
            run_ts=run_ts,
        )
        owner = None if queued else self.owner
        if version is not None or queued:
            if version is None:
                version = (await self.storage.push_definition(definition.workflow_id, definition.document)).version
            record.version = version
            instance, created = await self.storage.create_instance(record, owner, self.lease_ttl)
        else:
            instance, created = await self.storage.start_instance(definition.document, record, self.owner,
                                                                  self.lease_ttl)
        definition.version = record.version
        if created and not queued and not instance.queued and not instance.status.terminal:
            # leased to us at generation 1: InstanceRun need not take it again right away
            self.fresh_leases[instance_id] = trio.current_time()
        if created and record.run_strategy == "last_only":
            from .strategy import stop_running

            await stop_running(self, definition.workflow_id, instance)
        return instance, created

    async def run(
        self,
        definition: Definition,
        instance: InstanceRecord,
        *,
        observer: Callable[[Event], None] | None = None,
        task_status=trio.TASK_STATUS_IGNORED,
    ) -> InstanceRecord:
        """Run ``instance`` to its end and return its final record. With ``nursery.start`` the
        :class:`InstanceRun` is handed back as soon as it runs (to stop or kill it).

        Takes the instance's lease first (raises :class:`LeaseHeld` if a live worker has it);
        an instance that already has attempts in storage is resumed where it was. A queued
        instance first waits for its turn under its run strategy (:func:`legato.strategy.wait_turn`)."""
        if instance.queued and instance.instance_id not in self.fresh_leases:
            from .strategy import wait_turn

            instance, mine = await wait_turn(self, instance)
            if not mine and not instance.status.terminal:
                raise LeaseHeld(f"instance {instance.instance_id} was taken by another worker while it waited "
                                "for its turn; that worker runs it")
        return await self._drive(InstanceRun(self, definition, instance, observer), task_status)

    async def _drive(self, run: InstanceRun, task_status) -> InstanceRecord:
        iid = run.iid
        self.runs[iid] = run
        _gc_hold()
        # What StepContext.workflows answers in this instance's step tasks (they inherit it).
        token = RUNNING_ENGINE.set(self)
        try:
            return await run.run(task_status)
        finally:
            RUNNING_ENGINE.reset(token)
            _gc_release()
            del self.runs[iid]

    async def resume(self, instance_id: str, *, observer: Callable[[Event], None] | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> InstanceRecord:
        """Resume an instance from storage: its pinned definition version, its evaluated params,
        its attempts. Finished steps are not run again; a step that was running when its
        previous owner died is reattached if its step type can, else it ends PLATFORM_FAILED
        and its retry policy decides."""
        instance = await self.storage.get_instance(instance_id)
        if instance is None:
            raise StorageError(f"no instance {instance_id!r} in {self.storage.url}")
        definition = await self._pinned(instance)
        return await self.run(definition, instance, observer=observer, task_status=task_status)

    async def _pinned(self, instance: InstanceRecord) -> Definition:
        """The definition version ``instance`` runs (it pinned it when it started)."""
        version = await self.storage.get_definition(instance.workflow_id, instance.version)
        if version is None:
            raise StorageError(f"definition {instance.workflow_id} v{instance.version} of {instance.instance_id} "
                               "is missing")
        definition = self.load(version.document)
        definition.version = version.version
        return definition

    async def restart(self, instance_id: str, *, observer: Callable[[Event], None] | None = None,
                      task_status=trio.TASK_STATUS_IGNORED) -> InstanceRecord:
        """Run an ended instance again, as its next run, from its incomplete steps (Maestro's
        restart from incomplete): steps that completed in an earlier run are carried over and never
        run again; the ones that failed, were stopped or timed out run again as new attempts (with
        their evaluated params and fresh retry budgets), and what they lead to after them. In a
        foreach, only the iterations that did not succeed run again. Raises :class:`RestartRefused`
        for an instance that has not ended, or ended SUCCEEDED."""
        instance = await self.storage.get_instance(instance_id)
        if instance is None:
            raise StorageError(f"no instance {instance_id!r} in {self.storage.url}")
        if not instance.status.terminal:
            raise RestartRefused(f"instance {instance_id} has not ended ({instance.status.value}): a restart runs an "
                                 "ended instance again; `legato resume` continues an unfinished one")
        if instance.status is InstanceStatus.SUCCEEDED:
            raise RestartRefused(f"instance {instance_id} ended SUCCEEDED: it has no incomplete step to run again; "
                                 "start a new instance to run the workflow again")
        definition = await self._pinned(instance)
        run = InstanceRun(self, definition, instance, observer, restart=True)
        return await self._drive(run, task_status)

    async def execute(self, definition: Definition, params: dict[str, Any] | None = None, **kwargs) -> InstanceRecord:
        """Start and run to the end: the one-call way used by tests and examples."""
        observer = kwargs.pop("observer", None)
        instance, _ = await self.start(definition, params, **kwargs)
        return await self.run(definition, instance, observer=observer)


def resolve_workflow_secrets(definition: Definition, values: dict[str, Any], compiler, secrets=None) -> dict[str, Any]:
    """The workflow's params with secret references resolved; raises StartError naming the param."""
    from .secrets import Secrets

    try:
        return resolve_secrets(definition.params, values, compiler, secrets if secrets is not None else Secrets())
    except ParamError as exc:
        raise StartError(exc.message, f"/workflow/params{exc.pointer}") from None


# While instances run, the cyclic GC's youngest generation is collected every GC_YOUNG
# allocations instead of every 700: a run allocates many short-lived objects that plain reference
# counting frees (events, records, trio tasks) beside long-lived ones that each collection would
# walk again (the definition, the steps' state). Process-wide, so set by the first run and put
# back by the last.
GC_YOUNG = 50_000
_gc_runs = 0
_gc_saved: tuple[int, ...] | None = None


def _gc_hold() -> None:
    global _gc_runs, _gc_saved
    if _gc_runs == 0:
        _gc_saved = gc.get_threshold()
        if _gc_saved[0] and _gc_saved[0] < GC_YOUNG:  # 0: the GC is off; leave it so
            gc.set_threshold(GC_YOUNG, *_gc_saved[1:])
    _gc_runs += 1


def _gc_release() -> None:
    global _gc_runs
    _gc_runs -= 1
    if _gc_runs == 0 and _gc_saved is not None and gc.get_threshold()[0] == GC_YOUNG:
        gc.set_threshold(*_gc_saved)


def _utc(ts: float):
    import datetime

    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)


